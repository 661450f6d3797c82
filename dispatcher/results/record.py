"""What <arch>.json and summary.json hold: one function names every key of each.

`ResultRecord.to_dict` writes the file format; `ResultRecord.from_dict` reads it back for
outside readers (and tests), tolerating missing optional keys as older files lack them.
polyarch itself never reads its own result files back: the hub renders from records.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import time
from typing import Any, Mapping, Optional

from dispatcher.common.states import Overall, Status
from dispatcher.common.states import arch_specific as arch_specific_failure
from dispatcher.results.junit import MAX_NAMED_TESTS, JUnit, TestCounts, arch_specific, changes
from dispatcher.results.layout import File, name

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Attempt:
    """An earlier attempt: a failure retry_failed ran again, or a final result a person
    asked to rerun."""

    attempt: int
    runner: str
    status: Status
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    reason: str
    log: bytes = b""  # kept in the state only until the files are written


@dataclasses.dataclass(frozen=True)
class ResultRecord:
    """One final result of one (repo, commit, arch)."""

    repo: str
    branch: str
    commit: str
    arch: str
    runner: str
    status: Status
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    attempt: int
    reason: str = ""
    log_truncated: bool = False
    tests: Optional[TestCounts] = None
    runner_host: str = ""
    runner_machine: str = ""
    runner_emulated: bool = False
    runner_kernel: str = ""
    runner_qemu: str = ""  # emulated jobs: the qemu-user version that ran them
    runner_root: str = ""  # jobs in a root: "<arch> <suite> <packages digest>"
    rerun_by: str = ""  # who asked for this run, when it is a rerun
    failed_tests: tuple[str, ...] = ()
    earlier: tuple[Attempt, ...] = ()  # failed attempts run again under retry_failed, oldest first
    branches: tuple[str, ...] = ()  # every branch the commit was seen on, the first first

    def __post_init__(self) -> None:
        if not self.branches and self.branch:  # a record from before branches were kept
            object.__setattr__(self, "branches", (self.branch,))

    @property
    def duration(self) -> float:
        return round(max(0.0, self.finished_at - self.started_at), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "repo": self.repo,
            "branch": self.branch,
            "branches": list(self.branches),
            "commit": self.commit,
            "arch": self.arch,
            "runner": self.runner,
            "runner_host": self.runner_host,
            "runner_machine": self.runner_machine,
            "emulated": self.runner_emulated,
            "kernel": self.runner_kernel,
            "qemu": self.runner_qemu,
            "root": self.runner_root,
            "rerun_by": self.rerun_by,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration": self.duration,
            "attempt": self.attempt,
            "reason": self.reason,
            "log": name(File.LOG, self.arch),
            "log_truncated": self.log_truncated,
            "junit": name(File.JUNIT, self.arch) if self.tests is not None else None,
            "tests": dataclasses.asdict(self.tests) if self.tests is not None else None,
            "failed_tests": list(self.failed_tests[:MAX_NAMED_TESTS]),
            "earlier_attempts": [
                {"attempt": a.attempt, "runner": a.runner, "status": a.status.value, "exit_code": a.exit_code,
                 "started_at": iso(a.started_at), "finished_at": iso(a.finished_at),
                 "duration": round(max(0.0, a.finished_at - a.started_at), 3), "reason": a.reason,
                 "log": name(File.ATTEMPT_LOG, self.arch, a.attempt)}
                for a in self.earlier],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResultRecord":
        """The record of a <arch>.json; raises ValueError (KeyError, TypeError) when a
        required key is missing or wrong. Optional keys default as older files lack them."""
        tests = data.get("tests")
        earlier = data.get("earlier_attempts") or []
        return cls(
            repo=str(data["repo"]), branch=str(data.get("branch", "")), commit=str(data["commit"]),
            branches=tuple(str(b) for b in data.get("branches") or ()),
            arch=str(data["arch"]), runner=str(data.get("runner", "")), status=Status(data["status"]),
            exit_code=data.get("exit_code") if isinstance(data.get("exit_code"), int) else None,
            started_at=parse_iso(data.get("started_at")), finished_at=parse_iso(data.get("finished_at")),
            attempt=int(data.get("attempt", 1)), reason=str(data.get("reason", "")),
            log_truncated=bool(data.get("log_truncated", False)),
            tests=TestCounts(**{k: int(tests.get(k, 0)) for k in ("total", "passed", "failed", "errors", "skipped")})
            if isinstance(tests, dict) else None,
            runner_host=str(data.get("runner_host", "")), runner_machine=str(data.get("runner_machine", "")),
            runner_emulated=bool(data.get("emulated", False)), runner_kernel=str(data.get("kernel", "")),
            runner_qemu=str(data.get("qemu", "")), runner_root=str(data.get("root", "")),
            rerun_by=str(data.get("rerun_by", "")),
            failed_tests=tuple(str(t) for t in data.get("failed_tests") or ()),
            earlier=tuple(Attempt(int(a["attempt"]), str(a.get("runner", "")), Status(a["status"]),
                                  a.get("exit_code") if isinstance(a.get("exit_code"), int) else None,
                                  parse_iso(a.get("started_at")), parse_iso(a.get("finished_at")),
                                  str(a.get("reason", "")))
                          for a in earlier if isinstance(a, dict)))


def iso(ts: float) -> Optional[str]:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def parse_iso(text: object) -> float:
    """iso()'s inverse; 0.0 for a missing time."""
    if not isinstance(text, str) or not text:
        return 0.0
    main, _, millis = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def dumps(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _status(value: object) -> Optional[Status]:
    if value is None or isinstance(value, Status):
        return value
    return Status(value)


def summary_dict(repo: str, commit: str, branch: str, statuses: Mapping[str, Optional[Status | str]],
                 junit: Optional[Mapping[str, JUnit]] = None, now: Optional[float] = None,
                 branches: tuple[str, ...] = (), parent: str = "",
                 parent_junit: Optional[Mapping[str, JUnit]] = None) -> dict[str, Any]:
    """summary.json: every configured arch of one commit (None: not final yet), the overall
    verdict, the tests that fail on some architectures only (from `junit`, by arch), and
    what changed against the first `parent` (its `parent_junit`)."""
    new_failures, fixed = changes(dict(junit or {}), dict(parent_junit or {}))
    finals = {arch: _status(s) for arch, s in sorted(statuses.items())}
    archs = {arch: (s.value if s else Overall.PENDING.value) for arch, s in finals.items()}
    failing = sorted(a for a, s in finals.items() if s is not None and not s.passing)
    return {
        "schema": SCHEMA_VERSION,
        "repo": repo,
        "commit": commit,
        "branch": branch,
        "branches": list(branches or ((branch,) if branch else ())),
        "status": Overall.of(finals.values()).value,
        "architectures": archs,
        # Fails on some architectures while passing on others: a portability bug. An error
        # (it could not run there) is no such sign.
        "arch_specific_failure": arch_specific_failure(finals.values()),
        "failing_architectures": failing,
        "flaky_architectures": sorted(a for a, s in finals.items() if s is Status.FLAKY),
        # Tests that fail on one arch and pass on another (from the JUnit reports).
        "arch_specific_tests": arch_specific(dict(junit or {})),
        # Against the first parent, per arch (an arch is missing where either has no JUnit):
        # tests failing here that passed there, and the reverse.
        "parent": parent,
        "new_failures": new_failures,
        "fixed": fixed,
        "updated_at": iso(time.time() if now is None else now),
    }
