"""The result files in test_results/: the users' interface, written atomically.

`result_paths` is the only place that turns (repo, commit, arch) into a path; it
validates every part, so nothing can land outside the results folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import InvalidName
from .fsutil import atomic_write
from .names import check_commit, check_repo, parse_arch
from .protocol import Status

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


@dataclasses.dataclass(frozen=True)
class TestCounts:
    total: int
    passed: int
    failed: int
    errors: int
    skipped: int


def parse_junit(data: bytes) -> Optional[TestCounts]:
    """Counts from a JUnit XML file (one <testsuite> or a <testsuites> of several)."""
    # The file comes from the job, i.e. from whoever can push: no DTD means no entity
    # expansion tricks (billion laughs, external entities) whatever the XML parser does.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return None
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs refused just above
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites"):
        return None
    total = failed = errors = skipped = 0
    for suite in suites:
        try:
            total += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0))
            errors += int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", suite.get("disabled", 0)))
        except ValueError:
            return None
    return TestCounts(total, max(0, total - failed - errors - skipped), failed, errors, skipped)


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
        }


def _iso(ts: float) -> Optional[str]:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _dumps(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_result(root: Path, record: ResultRecord, log: bytes, junit: bytes) -> ResultPaths:
    """Write log, JUnit, then <arch>.json last: the JSON's presence means all is there."""
    paths = result_paths(root, record.repo, record.commit, record.arch)
    atomic_write(paths.log, log)
    if junit and record.tests is not None:
        atomic_write(paths.junit, junit)
    atomic_write(paths.json, _dumps(record.to_dict()))
    return paths


def summary_dict(repo: str, commit: str, branch: str, statuses: Mapping[str, Optional[str]]) -> dict[str, Any]:
    """summary.json: every configured arch of one commit, and the overall verdict."""
    archs = {arch: (status or PENDING) for arch, status in sorted(statuses.items())}
    if any(s == PENDING for s in archs.values()):
        overall = PENDING
    elif all(s == Status.PASSED.value for s in archs.values()):
        overall = Status.PASSED.value
    else:
        overall = Status.FAILED.value
    passing = sorted(a for a, s in archs.items() if s == Status.PASSED.value)
    failing = sorted(a for a, s in archs.items() if s not in (Status.PASSED.value, PENDING))
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
        "updated_at": _iso(time.time()),
    }


def write_summary(root: Path, repo: str, commit: str, branch: str,
                  statuses: Mapping[str, Optional[str]]) -> Path:
    first_arch = next(iter(statuses))
    path = result_paths(root, repo, commit, first_arch).summary
    atomic_write(path, _dumps(summary_dict(repo, commit, branch, statuses)))
    return path
