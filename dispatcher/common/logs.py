"""Logging for the daemons: stderr, in a form journald keeps; rich only on a terminal."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        # journald stamps each line itself; elsewhere (files, CI) a timestamp helps.
        fmt = "%(levelname)s %(name)s: %(message)s"
        if "JOURNAL_STREAM" not in os.environ:
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    # GitPython and watchfiles log every command and every file event; keep our lines readable.
    for noisy in ("git", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
