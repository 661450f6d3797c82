"""What `polyarch-dispatcher status` shows: records from the store, rendered two ways.

`collect` turns rows into plain dataclasses; `to_json` and `render` are pure functions
of those, so the table and the JSON always say the same thing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from rich.table import Table

from .results import PENDING
from .store import JobRow, JobState, RunnerRow, Store


@dataclasses.dataclass(frozen=True)
class Cell:
    arch: str
    state: str  # passed/failed/timeout/error, or queued/running
    attempt: int
    runner: str
    duration: Optional[float]


@dataclasses.dataclass(frozen=True)
class CommitLine:
    repo: str
    commit: str
    branch: str
    author: str
    subject: str
    cells: tuple[Cell, ...]

    @property
    def overall(self) -> str:
        states = [c.state for c in self.cells]
        if any(s in ("queued", "running") for s in states):
            return PENDING
        return "passed" if all(s == "passed" for s in states) else "failed"


@dataclasses.dataclass(frozen=True)
class Report:
    commits: tuple[CommitLine, ...]
    runners: tuple[RunnerRow, ...]
    generated_at: float


def _cell(job: JobRow, now: float) -> Cell:
    if job.state in (JobState.FINISHED, JobState.DONE):
        state = job.status.value if job.status else "error"
        duration = (job.finished_at or 0) - (job.started_at or 0)
    elif job.state == JobState.LEASED:
        state, duration = "running", now - (job.leased_at or now)
    else:
        state, duration = "queued", None
    return Cell(job.arch, state, job.attempt, job.runner or "", duration)


def collect(store: Store, repo: Optional[str] = None, commit: Optional[str] = None, limit: int = 20) -> Report:
    now = time.time()
    lines: list[CommitLine] = []
    by_commit: dict[tuple[str, str], list[JobRow]] = {}
    for job in store.jobs(repo, commit, limit):
        by_commit.setdefault((job.repo, job.sha), []).append(job)
    for (repo_name, sha), jobs in by_commit.items():
        first = jobs[0]
        lines.append(CommitLine(repo_name, sha, first.branch, first.author, first.subject,
                                tuple(_cell(j, now) for j in jobs)))
    return Report(tuple(lines), tuple(store.runners()), now)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "commits": [
            {"repo": c.repo, "commit": c.commit, "branch": c.branch, "author": c.author, "subject": c.subject,
             "status": c.overall,
             "architectures": {cell.arch: dataclasses.asdict(cell) for cell in c.cells}}
            for c in report.commits
        ],
        "runners": [dataclasses.asdict(r) for r in report.runners],
    }


MARKS = {"passed": ("✔", "green"), "failed": ("✘", "red"), "timeout": ("⧗", "magenta"),
         "error": ("!", "red"), "running": ("▶", "yellow"), "queued": ("…", "dim")}


def render(report: Report) -> Table:
    archs = sorted({cell.arch for c in report.commits for cell in c.cells})
    table = Table(title="polyarch: recent commits", expand=False)
    table.add_column("repo", no_wrap=True)
    table.add_column("commit", no_wrap=True, min_width=10)
    table.add_column("branch", no_wrap=True)
    table.add_column("subject", max_width=30, overflow="ellipsis", no_wrap=True)
    for arch in archs:
        table.add_column(arch)
    for line in report.commits:
        cells = {cell.arch: cell for cell in line.cells}
        row = [line.repo, line.commit[:10], line.branch, line.subject]
        for arch in archs:
            cell = cells.get(arch)
            row.append(_render_cell(cell) if cell else "")
        table.add_row(*row)
    return table


def _render_cell(cell: Cell) -> str:
    mark, colour = MARKS.get(cell.state, ("?", "white"))
    parts = [f"[{colour}]{mark} {cell.state}[/]"]
    if cell.duration is not None:
        parts.append(f"{cell.duration:.1f}s")
    if cell.runner:
        parts.append(f"[dim]{cell.runner}[/]")
    return " ".join(parts)
