"""The rows the store hands out: typed, frozen, mapped from their columns by name."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Mapping, Optional

from dispatcher.common.states import Status
from dispatcher.results.junit import TestCounts
from dispatcher.results.record import Attempt


class JobState(str, enum.Enum):
    QUEUED = "queued"
    LEASED = "leased"
    RECORDED = "recorded"  # result durable in the state, files not yet written
    PUBLISHED = "published"  # files written: readers of test_results/ see it
    SET_ASIDE = "set-aside"  # its files could not be written for a reason of its own (reason says)

    @property
    def final(self) -> bool:
        return self in (JobState.RECORDED, JobState.PUBLISHED, JobState.SET_ASIDE)

    @property
    def settled(self) -> bool:
        """Nothing more will be written for it: published, or set aside."""
        return self in (JobState.PUBLISHED, JobState.SET_ASIDE)


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
    runner_qemu: str
    runner_root: str
    retries: int  # failed attempts run again under retry_failed
    reruns: int  # final results run again because a person asked (rerun)
    rerun_by: str  # who asked for the last rerun
    tests: Optional[TestCounts]  # from the JUnit XML, parsed once when the result was recorded
    failed_tests: tuple[str, ...]
    branches: tuple[str, ...]  # every branch its commit was seen on, the first first

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "JobRow":
        # A dashboard page maps 700 rows: the names once, the common empty lists without JSON.
        values = {name: row[name] for name in _JOB_FIELDS}
        values["state"] = JobState(values["state"])
        values["status"] = Status(values["status"]) if values["status"] else None
        values["log_truncated"] = bool(values["log_truncated"])
        values["runner_emulated"] = bool(values["runner_emulated"])
        values["tests"] = TestCounts(**json.loads(values["tests"])) if values["tests"] else None
        values["failed_tests"] = _json_tuple(values["failed_tests"])
        values["branches"] = _json_tuple(values["branches"])
        return cls(**values)


def _json_tuple(text: Optional[str]) -> tuple:
    return () if not text or text == "[]" else tuple(json.loads(text))


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRow))


JOB_COLUMNS = ", ".join(
    f"c.{f.name}" if f.name in ("branch", "branches", "author", "subject", "timestamp") else f"j.{f.name}"
    for f in dataclasses.fields(JobRow))
JOB_FROM = "jobs j JOIN commits c ON c.repo = j.repo AND c.sha = j.sha"


@dataclasses.dataclass(frozen=True)
class FinishedJob:
    """A job whose result is durable, with what its files need."""

    job: JobRow
    log: bytes
    junit: bytes
    attempts: tuple[Attempt, ...] = ()


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
    qemu: str = ""
    root: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "RunnerRow":
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        values["emulated"] = bool(values["emulated"])
        return cls(**values)


RUNNER_COLUMNS = ", ".join(f.name for f in dataclasses.fields(RunnerRow))


def attempt_from_row(row: Mapping[str, Any]) -> Attempt:
    return Attempt(row["attempt"], row["runner"], Status(row["status"]), row["exit_code"], row["started_at"] or 0.0,
                   row["finished_at"] or 0.0, row["reason"], row["log"] or b"")
