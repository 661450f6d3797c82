"""What `polyarch-dispatcher status` shows: records from the store, rendered two ways.

`collect` turns rows into plain dataclasses; `to_json` and `render` are pure functions
of those, so the table and the JSON always say the same thing. The HTML dashboard
(dashboard.py) renders the same `CommitLine`s.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .junitxml import MAX_NAMED_TESTS
from .protocol import ArchState, CommitStatus
from .results import overall_status
from .store import JobRow, JobState, Store

ACTIVE = ("queued", "running")


@dataclasses.dataclass(frozen=True)
class Cell:
    arch: str
    state: str  # passed/failed/timeout/error/flaky, or queued/running
    attempt: int
    runner: str
    duration: Optional[float]
    emulated: bool = False

    @property
    def final(self) -> bool:
        return self.state not in ACTIVE


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
        return overall_status({c.arch: (c.state if c.final else None) for c in self.cells})

    @property
    def arch_specific(self) -> bool:
        """Fails on some architectures and passes on others: a portability bug."""
        finals = [c.state for c in self.cells if c.final]
        return any(s in ("passed", "flaky") for s in finals) and any(s not in ("passed", "flaky") for s in finals)


@dataclasses.dataclass(frozen=True)
class ActiveJob:
    repo: str
    commit: str
    arch: str
    state: str  # queued or running
    runner: str
    elapsed: float  # since queued, or since leased when running
    attempt: int


@dataclasses.dataclass(frozen=True)
class RunnerLine:
    name: str
    arch: str
    host: str
    emulated: bool
    version: str
    last_seen: float
    connected: bool


@dataclasses.dataclass(frozen=True)
class Report:
    commits: tuple[CommitLine, ...]
    active: tuple[ActiveJob, ...]
    runners: tuple[RunnerLine, ...]
    generated_at: float


def cell(job: JobRow, now: float) -> Cell:
    if job.state in (JobState.FINISHED, JobState.DONE):
        state = job.status.value if job.status else "error"
        duration: Optional[float] = (job.finished_at or 0) - (job.started_at or 0)
    elif job.state == JobState.LEASED:
        state, duration = "running", now - (job.leased_at or now)
    else:
        state, duration = "queued", None
    return Cell(job.arch, state, job.attempt, job.runner or "", duration, job.runner_emulated)


def commit_lines(jobs: Iterable[JobRow], now: float) -> list[CommitLine]:
    """Group jobs (in commit order) into one line per commit."""
    by_commit: dict[tuple[str, str], list[JobRow]] = {}
    for job in jobs:
        by_commit.setdefault((job.repo, job.sha), []).append(job)
    return [CommitLine(repo, sha, js[0].branch, js[0].author, js[0].subject, tuple(cell(j, now) for j in js))
            for (repo, sha), js in by_commit.items()]


def collect(store: Store, repo: Optional[str] = None, commit: Optional[str] = None, limit: int = 20,
            heartbeat_timeout: float = 10.0) -> Report:
    now = time.time()
    lines = commit_lines(store.jobs(repo, commit, limit), now)
    active = [ActiveJob(j.repo, j.sha, j.arch, "running" if j.state == JobState.LEASED else "queued",
                        j.runner or "" if j.state == JobState.LEASED else "",
                        now - ((j.leased_at if j.state == JobState.LEASED else j.created_at) or now), j.attempt)
              for j in store.active_jobs(repo)]
    # The dispatcher writes last_seen every couple of seconds for connected runners.
    runners = [RunnerLine(r.name, r.arch, r.host, r.emulated, r.version, r.last_seen,
                          now - r.last_seen <= heartbeat_timeout) for r in store.runners()]
    return Report(tuple(lines), tuple(active), tuple(runners), now)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "generated_at": report.generated_at,
        "commits": [
            {"repo": c.repo, "commit": c.commit, "branch": c.branch, "author": c.author, "subject": c.subject,
             "status": c.overall, "arch_specific_failure": c.arch_specific,
             "architectures": {cell.arch: dataclasses.asdict(cell) for cell in c.cells}}
            for c in report.commits
        ],
        "active": [dataclasses.asdict(a) for a in report.active],
        "runners": [dataclasses.asdict(r) for r in report.runners],
    }


MARKS = {"passed": ("✔", "green"), "failed": ("✘", "red"), "timeout": ("◷", "magenta"),
         "error": ("!", "red"), "flaky": ("≈", "yellow"), "running": ("▶", "cyan"), "queued": ("…", "dim")}


def render(report: Report) -> Group:
    active = _active_table(report) if report.active else Text("queued and running: none", style="dim")
    return Group(_commits_table(report), active, _runners_table(report))


def _commits_table(report: Report) -> Table:
    archs = sorted({cell.arch for c in report.commits for cell in c.cells})
    repos = {c.repo for c in report.commits}
    title = "polyarch: recent commits" + (f" of {next(iter(repos))}" if len(repos) == 1 else "")
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
        row = ([line.repo] if len(repos) > 1 else []) + [sha, line.branch, line.author, line.subject]
        for arch in archs:
            c = cells.get(arch)
            row.append(_render_cell(c) if c else "")
        table.add_row(*row)
    if any(line.arch_specific for line in report.commits):
        table.caption = "[red]⚠[/] fails on some architectures and passes on others"
    return table


def _render_cell(cell: Cell) -> str:
    mark, colour = MARKS.get(cell.state, ("?", "white"))
    parts = [f"[{colour}]{mark} {cell.state}[/]"]
    if cell.duration is not None:
        parts.append(f"{cell.duration:.1f}s")
    if cell.runner:
        parts.append(f"[dim]{cell.runner}[/]")
    return " ".join(parts)


def _active_table(report: Report) -> Table:
    table = Table(title=f"queued and running: {len(report.active)}", expand=False)
    for name in ("repo", "commit", "arch", "state", "runner", "elapsed", "attempt"):
        table.add_column(name, no_wrap=True)
    for a in report.active[:30]:
        mark, colour = MARKS[a.state]
        table.add_row(a.repo, a.commit[:10], a.arch, f"[{colour}]{mark} {a.state}[/]", a.runner,
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
        table.add_row(r.name, r.arch, r.host, "qemu-user" if r.emulated else "native", ago, state)
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


def commit_status(store: Store, results_dir: Path, repo: str, sha: str) -> CommitStatus:
    """One commit for scripts (`wait`, the HTTP API): each arch's state, and for finished
    ones the test counts and failing tests from its result file."""
    jobs = [j for j in store.jobs(repo, sha, 1) if j.sha == sha]
    if not jobs:
        return CommitStatus(repo=repo, commit=sha, known=False)
    now = time.time()
    [line] = commit_lines(jobs, now)
    archs = []
    for c in line.cells:
        data: dict[str, Any] = {}
        published = False
        if c.final:
            try:
                loaded = json.loads((results_dir / repo / sha / f"{c.arch}.json").read_bytes())
                data = loaded if isinstance(loaded, dict) else {}
                published = True
            except (OSError, ValueError):
                pass  # durable but its file not written yet: the state is right, the test names not yet
        tests = data.get("tests") if isinstance(data.get("tests"), dict) else None
        archs.append(ArchState(arch=c.arch, state=c.state, runner=c.runner, duration=round(c.duration or 0.0, 3),
                               attempt=c.attempt, emulated=c.emulated,
                               tests_total=int(tests.get("total", 0)) if tests else -1,
                               tests_failed=int(tests.get("failed", 0)) + int(tests.get("errors", 0)) if tests else 0,
                               failed_tests=[str(t) for t in data.get("failed_tests", []) or []][:MAX_NAMED_TESTS],
                               reason=str(data.get("reason", "")), published=published))
    return CommitStatus(repo=repo, commit=sha, known=True, status=line.overall, branch=line.branch,
                        subject=line.subject, archs=archs)
