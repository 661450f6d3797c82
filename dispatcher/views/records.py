"""The records every view renders: one commit's line, its cells, active jobs, runners.

Plain frozen dataclasses built by the hub from its store (dispatcher/hub/reads.py); the
terminal (terminal.py), the HTML pages (html.py) and JSON are pure functions of them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from dispatcher.common.states import CellState, Overall, arch_specific
from dispatcher.results.record import ResultRecord
# Queued and running jobs and runners travel to a remote `status` as they are: the wire's
# records are the views' too.
from dispatcher.wire.protocol import ActiveJob, RunnerLine

__all__ = ["MARKS", "UNKNOWN", "ActiveJob", "Breakage", "Cell", "CommitLine", "HistoryLine", "Mark", "Outcome", "Report",
           "RunnerLine"]


@dataclasses.dataclass(frozen=True)
class Cell:
    arch: str
    state: CellState
    attempt: int
    runner: str
    duration: Optional[float]
    emulated: bool = False
    result: Optional[ResultRecord] = None  # the final result, once recorded

    @property
    def final(self) -> bool:
        return self.state.final


@dataclasses.dataclass(frozen=True)
class CommitLine:
    repo: str
    commit: str
    branch: str
    author: str
    subject: str
    cells: tuple[Cell, ...]
    timestamp: int = 0  # the commit's date (seconds since the epoch); 0: not known yet

    @property
    def pending(self) -> bool:
        return any(not c.final for c in self.cells)

    @property
    def overall(self) -> Overall:
        return Overall.of(c.state.status for c in self.cells)

    @property
    def arch_specific(self) -> bool:
        """Fails on some architectures and passes on others: a portability bug."""
        return arch_specific(c.state.status for c in self.cells)

    @property
    def failing_archs(self) -> list[str]:
        return [c.arch for c in self.cells if c.final and not (c.state.status and c.state.status.passing)]


@dataclasses.dataclass(frozen=True)
class Report:
    commits: tuple[CommitLine, ...]
    active: tuple[ActiveJob, ...]
    runners: tuple[RunnerLine, ...]
    generated_at: float


@dataclasses.dataclass(frozen=True)
class Mark:
    symbol: str
    colour: str  # rich's colour name; the HTML colours come from the state's CSS class


# One table of marks for the terminal and the HTML; the words stay next to the symbols
# for colour-blind readers.
MARKS: dict[str, Mark] = {
    CellState.PASSED.value: Mark("✔", "green"), CellState.FAILED.value: Mark("✘", "red"),
    CellState.TIMEOUT.value: Mark("◷", "magenta"), CellState.ERROR.value: Mark("!", "red"),
    CellState.FLAKY.value: Mark("≈", "yellow"), CellState.RUNNING.value: Mark("▶", "cyan"),
    CellState.QUEUED.value: Mark("…", "dim"), Overall.PENDING.value: Mark("…", "dim"),
    CellState.CANCELLED.value: Mark("⊘", "dim"),
}
UNKNOWN = Mark("?", "white")


@dataclasses.dataclass(frozen=True)
class Breakage:
    """A test failing at a branch's head on one architecture, and since when."""

    branch: str
    head: str
    arch: str
    test: str
    broke: str  # the oldest commit of the run of failures that reaches the head
    subject: str  # that commit's subject
    known: bool  # its first parent passed the test; False: the run goes back past what was tested


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One test on one commit and architecture, over every attempt there."""

    arch: str
    # passed, failed, error, skipped; absent (not in its JUnit), no-junit, queued, running, not-run
    outcome: str
    flaky: bool = False  # both passed and failed (or error) among the attempts
    first_failure: bool = False  # failing here, passed on the first parent


@dataclasses.dataclass(frozen=True)
class HistoryLine:
    commit: str
    subject: str
    timestamp: int
    outcomes: tuple[Outcome, ...]
