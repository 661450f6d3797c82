"""The result files in test_results/: the users' interface, written atomically.

`result_paths` is the only place that turns (repo, commit, arch) into a path; it
validates every part, so nothing can land outside the results folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import InvalidName
from .fsutil import atomic_write
from .junitxml import MAX_NAMED_TESTS, JUnit, TestCounts, arch_specific, parse
from .names import check_commit, check_repo, parse_arch
from .protocol import Status
from .rows import AttemptRow

SCHEMA_VERSION = 1
PENDING = "pending"


@dataclasses.dataclass(frozen=True)
class ResultPaths:
    folder: Path
    json: Path
    log: Path
    junit: Path
    summary: Path


def result_paths(root: Path, repo: str, commit: str, arch: str) -> ResultPaths:
    """(repo, commit, arch) -> the files of that result; refuses anything that escapes."""
    root = Path(root).absolute()
    arch_name = parse_arch(arch).value
    folder = root / check_repo(repo) / check_commit(commit)
    # Belt and braces: the patterns above already forbid '/' and '..'.
    if folder.resolve().parent.parent != root.resolve():
        raise InvalidName(f"result path for {repo!r}/{commit!r} escapes {root}")
    return ResultPaths(
        folder=folder,
        json=folder / f"{arch_name}.json",
        log=folder / f"{arch_name}.log",
        junit=folder / f"{arch_name}.junit.xml",
        summary=folder / "summary.json",
    )


def attempt_log_name(arch: str, attempt: int) -> str:
    """The log of an earlier attempt that retry_failed ran again, beside the final one."""
    return f"{arch}.attempt{attempt}.log"


@dataclasses.dataclass(frozen=True)
class ResultRecord:
    """What <arch>.json holds; `to_dict` names every key of the file format."""

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
    failed_tests: tuple[str, ...] = ()
    earlier: tuple[AttemptRow, ...] = ()  # failed attempts run again under retry_failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "repo": self.repo,
            "branch": self.branch,
            "commit": self.commit,
            "arch": self.arch,
            "runner": self.runner,
            "runner_host": self.runner_host,
            "runner_machine": self.runner_machine,
            "emulated": self.runner_emulated,
            "kernel": self.runner_kernel,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration": round(max(0.0, self.finished_at - self.started_at), 3),
            "attempt": self.attempt,
            "reason": self.reason,
            "log": f"{self.arch}.log",
            "log_truncated": self.log_truncated,
            "junit": f"{self.arch}.junit.xml" if self.tests is not None else None,
            "tests": dataclasses.asdict(self.tests) if self.tests is not None else None,
            "failed_tests": list(self.failed_tests[:MAX_NAMED_TESTS]),
            # Failed attempts run again under retry_failed, oldest first.
            "earlier_attempts": [
                {"attempt": a.attempt, "runner": a.runner, "status": a.status.value, "exit_code": a.exit_code,
                 "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at),
                 "duration": round(max(0.0, a.finished_at - a.started_at), 3), "reason": a.reason,
                 "log": attempt_log_name(self.arch, a.attempt)}
                for a in self.earlier],
        }


def _iso(ts: float) -> Optional[str]:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _dumps(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_result(root: Path, record: ResultRecord, log: bytes, junit: bytes) -> ResultPaths:
    """Write the logs, JUnit, then <arch>.json last: the JSON's presence means all is there."""
    paths = result_paths(root, record.repo, record.commit, record.arch)
    for attempt in record.earlier:
        atomic_write(paths.folder / attempt_log_name(paths.json.stem, attempt.attempt), attempt.log)
    atomic_write(paths.log, log)
    if junit and record.tests is not None:
        atomic_write(paths.junit, junit)
    atomic_write(paths.json, _dumps(record.to_dict()))
    return paths


# A flaky pass is a pass: it is the test, not the code on that arch, that is in doubt.
PASSING = (Status.PASSED.value, Status.FLAKY.value)


def overall_status(statuses: Mapping[str, Optional[str]]) -> str:
    """pending while any arch is unfinished, else passed when every arch passed (flaky
    counts as passed), else failed."""
    values = [s or PENDING for s in statuses.values()]
    if any(s == PENDING for s in values):
        return PENDING
    return Status.PASSED.value if all(s in PASSING for s in values) else Status.FAILED.value


def summary_dict(repo: str, commit: str, branch: str, statuses: Mapping[str, Optional[str]],
                 junit: Optional[Mapping[str, JUnit]] = None) -> dict[str, Any]:
    """summary.json: every configured arch of one commit, and the overall verdict."""
    archs = {arch: (status or PENDING) for arch, status in sorted(statuses.items())}
    overall = overall_status(archs)
    passing = sorted(a for a, s in archs.items() if s in PASSING)
    failing = sorted(a for a, s in archs.items() if s not in PASSING and s != PENDING)
    return {
        "schema": SCHEMA_VERSION,
        "repo": repo,
        "commit": commit,
        "branch": branch,
        "status": overall,
        "architectures": archs,
        # Fails on some architectures while passing on others: a portability bug.
        "arch_specific_failure": bool(passing and failing),
        "failing_architectures": failing,
        "flaky_architectures": sorted(a for a, s in archs.items() if s == Status.FLAKY.value),
        # Tests that fail on one arch and pass on another (from the JUnit files).
        "arch_specific_tests": arch_specific(dict(junit or {})),
        "updated_at": _iso(time.time()),
    }


def read_junit(folder: Path, archs: Sequence[str]) -> dict[str, JUnit]:
    """The parsed <arch>.junit.xml of each arch that has one in a commit's folder."""
    out: dict[str, JUnit] = {}
    for arch in archs:
        try:
            data = (folder / f"{arch}.junit.xml").read_bytes()
        except OSError:
            continue
        report = parse(data)
        if report is not None:
            out[arch] = report
    return out


def write_summary(root: Path, repo: str, commit: str, branch: str,
                  statuses: Mapping[str, Optional[str]]) -> Path:
    first_arch = next(iter(statuses))
    path = result_paths(root, repo, commit, first_arch).summary
    junit = read_junit(path.parent, list(statuses))
    atomic_write(path, _dumps(summary_dict(repo, commit, branch, statuses, junit)))
    return path
