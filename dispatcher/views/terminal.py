"""What `polyarch-dispatcher status` prints: the records rendered as rich tables, or JSON.

`to_json` and `render` are pure functions of a Report, so the table and the JSON always
say the same thing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dispatcher.views.records import MARKS, UNKNOWN, Cell, Report


def mark(state: str) -> str:
    """A state as rich markup: its symbol and word in its colour."""
    m = MARKS.get(state, UNKNOWN)
    return f"[{m.colour}]{m.symbol} {state}[/]"


def _cell_json(cell: Cell) -> dict[str, Any]:
    return {"arch": cell.arch, "state": cell.state.value, "attempt": cell.attempt, "runner": cell.runner,
            "duration": cell.duration, "emulated": cell.emulated}


def _plain(obj: Any) -> dict[str, Any]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(obj).items()}

def to_json(report: Report) -> dict[str, Any]:
    return {
        "generated_at": report.generated_at,
        "commits": [
            {"repo": c.repo, "commit": c.commit, "branch": c.branch, "author": c.author, "subject": c.subject,
             "status": c.overall.value, "arch_specific_failure": c.arch_specific,
             "architectures": {cell.arch: _cell_json(cell) for cell in c.cells}}
            for c in report.commits
        ],
        "active": [_plain(a) for a in report.active],
        "runners": [dataclasses.asdict(r) for r in report.runners],
    }


def render(report: Report) -> Group:
    active = _active_table(report) if report.active else Text("queued and running: none", style="dim")
    return Group(_commits_table(report), active, _runners_table(report))


def _commits_table(report: Report) -> Table:
    archs = sorted({cell.arch for c in report.commits for cell in c.cells})
    repos = {c.repo for c in report.commits}
    # Everything that comes from a commit or a runner is text, never markup (Text, escape).
    title = Text("polyarch: recent commits" + (f" of {next(iter(repos))}" if len(repos) == 1 else ""),
                 style="table.title")
    table = Table(title=title, expand=False)
    if len(repos) > 1:
        table.add_column("repo", no_wrap=True)
    table.add_column("commit", no_wrap=True, min_width=10)
    table.add_column("branch", no_wrap=True)
    table.add_column("author", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("subject", max_width=30, overflow="ellipsis", no_wrap=True)
    for arch in archs:
        table.add_column(arch)
    for line in report.commits:
        cells = {cell.arch: cell for cell in line.cells}
        sha = line.commit[:10] + (" [red]⚠[/]" if line.arch_specific else "")
        row = ([Text(line.repo)] if len(repos) > 1 else []) + [sha, Text(line.branch), Text(line.author),
                                                                 Text(line.subject)]
        for arch in archs:
            c = cells.get(arch)
            row.append(_render_cell(c) if c else "")
        table.add_row(*row)
    if any(line.arch_specific for line in report.commits):
        table.caption = "[red]⚠[/] fails on some architectures and passes on others"
    return table


def _render_cell(cell: Cell) -> str:
    parts = [mark(cell.state.value)]
    if cell.duration is not None:
        parts.append(f"{cell.duration:.1f}s")
    if cell.runner:
        parts.append(f"[dim]{escape(cell.runner)}[/]")
    return " ".join(parts)


def _active_table(report: Report) -> Table:
    table = Table(title=f"queued and running: {len(report.active)}", expand=False)
    for name in ("repo", "commit", "arch", "state", "runner", "elapsed", "attempt"):
        table.add_column(name, no_wrap=True)
    for a in report.active[:30]:
        table.add_row(Text(a.repo), a.commit[:10], a.arch, mark(a.state.value), Text(a.runner),
                      _elapsed(a.elapsed), str(a.attempt))
    if len(report.active) > 30:
        table.caption = f"and {len(report.active) - 30} more"
    return table


def _runners_table(report: Report) -> Table:
    table = Table(title="runners", expand=False)
    # last seen: the dispatcher notes every 2 s which runners are connected, and when
    # one leaves, the last time it heard from it.
    for name in ("runner", "arch", "host", "emulated", "last seen", "state"):
        table.add_column(name, no_wrap=True)
    for r in report.runners:
        ago = _elapsed(report.generated_at - r.last_seen) + " ago"
        state = "[green]connected[/]" if r.connected else "[dim]gone[/]"
        table.add_row(Text(r.name), r.arch, Text(r.host), "qemu-user" if r.emulated else "native", ago, state)
    return table


def _elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d"
