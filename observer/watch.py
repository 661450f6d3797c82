"""Instant triggers for repositories on a local path: a watchfiles watch on their refs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import watchfiles

log = logging.getLogger("polyarch.observer")

DEBOUNCE_MS = 10  # a push renames a few ref files at once; batch them, but barely
STEP_MS = 5


def _is_ref_change(change: watchfiles.Change, path: str) -> bool:
    # Objects arrive before the ref moves; only the ref move means "new commit".
    return "/refs/" in path or path.endswith(("packed-refs", "HEAD"))


class RefWatcher:
    """One thread per watched git folder; calls `on_change(name)` after a ref moved."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def watch(self, name: str, git_dir: Path) -> None:
        thread = threading.Thread(target=self._run, args=(name, git_dir), name=f"watch-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _run(self, name: str, git_dir: Path) -> None:
        try:
            for _changes in watchfiles.watch(git_dir, watch_filter=_is_ref_change, debounce=DEBOUNCE_MS,
                                             step=STEP_MS, stop_event=self.stop_event, raise_interrupt=False):
                self.on_change(name)
        except Exception as exc:  # polling still covers this repo
            log.warning("watch on %s stopped (%s); polling continues", git_dir, exc)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=2)
