"""The states of one (commit, arch) and of a commit, as types: the one vocabulary of the
wire, the store, the result files and every view.

    Reported  what a runner may send in a RESULT (the wire refuses anything else)
    Status    a final status: a reported one, or one only the dispatcher gives (flaky)
    CellState where one (commit, arch) stands: queued, running, or its final status
    Overall   a commit: pending while any arch is unfinished, then passed or failed
"""

from __future__ import annotations

import enum
from typing import Iterable, Optional


class Reported(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"


class Status(str, enum.Enum):
    """Final status of one (repo, commit, arch)."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"
    # The dispatcher's, never a runner's: passed on a retry after a failure.
    FLAKY = "flaky"
    # The dispatcher's too: the job will not run (its architecture or repository left the
    # config). Not a pass: a commit with a cancelled architecture has not passed there.
    CANCELLED = "cancelled"

    @property
    def passing(self) -> bool:
        """A flaky pass is a pass: it is the test, not the code on that arch, that is in doubt."""
        return self in (Status.PASSED, Status.FLAKY)

    @property
    def a_verdict(self) -> bool:
        """The code's verdict on that arch: a pass, a failure or a timeout. An error (the job
        could not run: a setup that failed, a missing program) or a cancelled job says nothing
        about the code."""
        return self not in (Status.ERROR, Status.CANCELLED)

    @property
    def retryable(self) -> bool:
        """What retry_failed runs again: the test's verdict, not an error around it."""
        return self in (Status.FAILED, Status.TIMEOUT)

    @classmethod
    def of(cls, reported: Reported) -> "Status":
        return cls(reported.value)


class CellState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    ERROR = "error"
    FLAKY = "flaky"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (CellState.QUEUED, CellState.RUNNING)

    @property
    def status(self) -> Optional[Status]:
        return Status(self.value) if self.final else None

    @classmethod
    def of(cls, status: Status) -> "CellState":
        return cls(status.value)


class Overall(str, enum.Enum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"

    @classmethod
    def of(cls, statuses: Iterable[Optional[Status]]) -> "Overall":
        """pending while any arch is unfinished (None), else passed when every arch passed
        (flaky counts as passed), else failed."""
        values = list(statuses)
        if any(s is None for s in values):
            return cls.PENDING
        return cls.PASSED if all(s.passing for s in values if s is not None) else cls.FAILED


def arch_specific(statuses: Iterable[Optional[Status]]) -> bool:
    """Fails on some architectures and passes on others: a portability bug."""
    finals = [s for s in statuses if s is not None and s.a_verdict]
    return any(s.passing for s in finals) and any(not s.passing for s in finals)
