"""What `polyarch-dispatcher history` prints: one test, commit by commit (newest first) and
architecture by architecture, as a rich table or JSON; pure functions of HistoryLines."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from dispatcher.views.records import HistoryLine, Outcome

# An outcome's colour; the word itself is always printed, for colour-blind readers.
COLOURS = {"passed": "green", "failed": "red", "error": "red", "skipped": "yellow", "running": "cyan"}


def to_json(repo: str, test: str, lines: Sequence[HistoryLine]) -> dict[str, Any]:
    return {"repo": repo, "test": test,
            "commits": [{"commit": h.commit, "subject": h.subject, "timestamp": h.timestamp,
                         "architectures": {o.arch: {k: v for k, v in dataclasses.asdict(o).items() if k != "arch"}
                                           for o in h.outcomes}} for h in lines]}


def render(repo: str, test: str, lines: Sequence[HistoryLine], archs: Sequence[str]) -> Table:
    table = Table(title=f"{escape(test)} in {escape(repo)}, newest commit first", title_justify="left")
    table.add_column("commit", no_wrap=True)
    table.add_column("date (UTC)", no_wrap=True)
    table.add_column("subject", max_width=40, no_wrap=True)
    for arch in archs:
        table.add_column(arch, no_wrap=True)
    for h in lines:
        cells = {o.arch: o for o in h.outcomes}
        date = time.strftime("%Y-%m-%d %H:%M", time.gmtime(h.timestamp)) if h.timestamp > 0 else ""
        table.add_row(h.commit[:12], date, escape(h.subject), *(_cell(cells[a]) for a in archs))
    return table


def _cell(o: Outcome) -> str:
    text = f"[{COLOURS.get(o.outcome, 'dim')}]{o.outcome}[/]"
    if o.flaky:
        text += " [yellow](flaky)[/]"
    if o.first_failure:
        text += " [bold red]← first failure[/]"
    return text
