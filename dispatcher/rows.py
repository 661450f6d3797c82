"""The rows the store hands out: typed, frozen, one place for their SQL columns."""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

from .protocol import Status


class JobState(str, enum.Enum):
    QUEUED = "queued"
    LEASED = "leased"
    FINISHED = "finished"  # result durable in SQLite, files not yet written
    DONE = "done"  # files written


@dataclasses.dataclass(frozen=True)
class JobRow:
    id: int
    repo: str
    sha: str
    arch: str
    state: JobState
    attempt: int
    lease_id: Optional[str]
    runner: Optional[str]
    created_at: float
    leased_at: Optional[float]
    status: Optional[Status]
    exit_code: Optional[int]
    started_at: Optional[float]
    finished_at: Optional[float]
    reason: str
    log_truncated: bool
    branch: str
    author: str
    subject: str
    timestamp: int
    runner_host: str
    runner_machine: str
    runner_emulated: bool
    runner_kernel: str
    retries: int  # failed attempts run again under retry_failed


_JOB_COLUMNS = ("j.id, j.repo, j.sha, j.arch, j.state, j.attempt, j.lease_id, j.runner, "
                "j.created_at, j.leased_at, j.status, j.exit_code, j.started_at, j.finished_at, "
                "j.reason, j.log_truncated, c.branch, c.author, c.subject, c.timestamp, "
                "j.runner_host, j.runner_machine, j.runner_emulated, j.runner_kernel, j.retries")
_JOB_FROM = "jobs j JOIN commits c ON c.repo = j.repo AND c.sha = j.sha"


def _job(row: tuple) -> JobRow:
    values = list(row)
    values[4] = JobState(values[4])
    values[10] = Status(values[10]) if values[10] else None
    values[15] = bool(values[15])
    values[22] = bool(values[22])
    return JobRow(*values)


@dataclasses.dataclass(frozen=True)
class AttemptRow:
    """An earlier, failed attempt of a job that retry_failed ran again."""

    attempt: int
    runner: str
    status: Status
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    reason: str
    log: bytes


@dataclasses.dataclass(frozen=True)
class FinishedJob:
    """A job whose result is durable, with what its files need."""

    job: JobRow
    log: bytes
    junit: bytes
    attempts: tuple[AttemptRow, ...] = ()


@dataclasses.dataclass(frozen=True)
class Expired:
    job: JobRow
    requeued: bool


@dataclasses.dataclass(frozen=True)
class RunnerRow:
    name: str
    arch: str
    host: str
    machine: str
    version: str
    emulated: bool
    kernel: str
    first_seen: float
    last_seen: float


_RUNNER_COLUMNS = "name, arch, host, machine, version, emulated, kernel, first_seen, last_seen"
