"""Result files: paths that cannot escape, atomic writes, summaries, JUnit counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatcher.errors import InvalidName
from dispatcher.fsutil import atomic_write, remove_stale_temporaries
from dispatcher.names import Arch, check_branch, parse_arch
from dispatcher.protocol import Status
from dispatcher.junitxml import parse_counts as parse_junit
from dispatcher.results import ResultRecord, result_paths, summary_dict, write_result

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_result_paths_are_under_root(tmp_path: Path) -> None:
    paths = result_paths(tmp_path, "demo", SHA, "aarch64")
    assert paths.json == tmp_path / "demo" / SHA / "arm64.json"
    assert paths.log.name == "arm64.log" and paths.junit.name == "arm64.junit.xml"
    assert paths.summary == tmp_path / "demo" / SHA / "summary.json"


@pytest.mark.parametrize("repo, commit, arch", [
    ("..", SHA, "amd64"), ("a/../../etc", SHA, "amd64"), ("demo", "../" + SHA[3:], "amd64"),
    ("demo", SHA.upper(), "amd64"), ("demo", SHA[:39], "amd64"), ("demo", SHA, "../amd64"),
    ("", SHA, "amd64"), ("demo\x00", SHA, "amd64"), ("/etc", SHA, "amd64"),
])
def test_result_paths_refuse_anything_that_escapes(tmp_path: Path, repo: str, commit: str, arch: str) -> None:
    with pytest.raises(InvalidName):
        result_paths(tmp_path, repo, commit, arch)


@pytest.mark.parametrize("name", ["main", "release/1.x", "feature/a-b_c+d"])
def test_good_branch_names(name: str) -> None:
    assert check_branch(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a..b", "a b", "$(id)", "a;b", "a`b`", "a/", "x.lock", "a//b", "é"])
def test_bad_branch_names(name: str) -> None:
    with pytest.raises(InvalidName):
        check_branch(name)


@pytest.mark.parametrize("machine, arch", [("x86_64", Arch.AMD64), ("aarch64", Arch.ARM64), ("armv7l", Arch.ARMHF),
                                           ("ppc64le", Arch.PPC64EL), ("i686", Arch.I386), ("s390x", Arch.S390X)])
def test_uname_spellings_are_normalised(machine: str, arch: Arch) -> None:
    assert parse_arch(machine) is arch


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]
    (target.parent / ".polyarch-tmp-crashed").write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1


def test_write_result_and_its_json(tmp_path: Path) -> None:
    junit = b'<testsuites><testsuite tests="4" failures="1" errors="1" skipped="0"/></testsuites>'
    record = ResultRecord(repo="demo", branch="main", commit=SHA, arch="amd64", runner="r1", status=Status.FAILED,
                          exit_code=1, started_at=1700000000.25, finished_at=1700000002.5, attempt=2,
                          tests=parse_junit(junit))
    paths = write_result(tmp_path, record, b"log text", junit)
    data = json.loads(paths.json.read_text())
    assert data["schema"] == 1 and data["status"] == "failed" and data["attempt"] == 2
    assert data["duration"] == 2.25 and data["started_at"] == "2023-11-14T22:13:20.250Z"
    assert data["tests"] == {"total": 4, "passed": 2, "failed": 1, "errors": 1, "skipped": 0}
    assert paths.log.read_bytes() == b"log text" and paths.junit.read_bytes() == junit


def test_parse_junit_rejects_garbage() -> None:
    assert parse_junit(b"not xml") is None
    assert parse_junit(b"<html/>") is None
    assert parse_junit(b'<testsuite tests="many"/>') is None


def test_summary_overall_status() -> None:
    assert summary_dict("d", SHA, "main", {"amd64": "passed", "arm64": None})["status"] == "pending"
    assert summary_dict("d", SHA, "main", {"amd64": "passed", "arm64": "passed"})["status"] == "passed"
    summary = summary_dict("d", SHA, "main", {"amd64": "passed", "arm64": "timeout"})
    assert summary["status"] == "failed" and summary["architectures"] == {"amd64": "passed", "arm64": "timeout"}
    assert summary["arch_specific_failure"] is True and summary["failing_architectures"] == ["arm64"]
    everywhere = summary_dict("d", SHA, "main", {"amd64": "failed", "arm64": "failed"})
    assert everywhere["arch_specific_failure"] is False
