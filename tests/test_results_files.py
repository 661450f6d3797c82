"""Result files: paths that cannot escape, atomic writes, summaries, JUnit counts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dispatcher.common.errors import InvalidName
from dispatcher.common.files import atomic_write, remove_stale_temporaries
from dispatcher.common.names import Arch, check_branch, check_branch_pattern, parse_arch
from dispatcher.common.states import Status
from dispatcher.results.junit import parse
from dispatcher.results.layout import File, name, path
from dispatcher.results.record import Attempt, ResultRecord, summary_dict
from dispatcher.results.writing import write_result

SHA = "0123456789abcdef0123456789abcdef01234567"


def parse_junit(data: bytes):
    report = parse(data)
    return report.counts if report is not None else None


def test_result_paths_are_under_root(tmp_path: Path) -> None:
    folder = tmp_path / "demo" / SHA
    assert path(tmp_path, File.RESULT, "demo", SHA, "aarch64") == folder / "arm64.json"
    assert path(tmp_path, File.LOG, "demo", SHA, "arm64").name == "arm64.log"
    assert path(tmp_path, File.JUNIT, "demo", SHA, "arm64").name == "arm64.junit.xml"
    assert path(tmp_path, File.ATTEMPT_LOG, "demo", SHA, "arm64", 2).name == "arm64.attempt2.log"
    assert path(tmp_path, File.SUMMARY, "demo", SHA) == folder / "summary.json"
    assert path(tmp_path, File.COMMIT_PAGE, "demo", SHA) == folder / "index.html"
    assert path(tmp_path, File.REPO_PAGE, "demo") == tmp_path / "demo" / "index.html"
    assert path(tmp_path, File.REPO_PAGE, "demo", n=3) == tmp_path / "demo" / "page-3.html"
    assert path(tmp_path, File.INDEX) == tmp_path / "index.html"


@pytest.mark.parametrize("repo, commit, arch", [
    ("..", SHA, "amd64"), ("a/../../etc", SHA, "amd64"), ("demo", "../" + SHA[3:], "amd64"),
    ("demo", SHA.upper(), "amd64"), ("demo", SHA[:39], "amd64"), ("demo", SHA, "../amd64"),
    ("", SHA, "amd64"), ("demo\x00", SHA, "amd64"), ("/etc", SHA, "amd64"),
])
def test_result_paths_refuse_anything_that_escapes(tmp_path: Path, repo: str, commit: str, arch: str) -> None:
    with pytest.raises(InvalidName):
        path(tmp_path, File.RESULT, repo, commit, arch)


# Every name git's check-ref-format takes, shell syntax aside.
@pytest.mark.parametrize("name", ["main", "release/1.x", "feature/a-b_c+d", "fix#12-arm", "50%-off", "a=b,c",
                                  "user@feature", "überarbeitung/ß", "refs/pull/12/head", "refs/merge-requests/3/head"])
def test_good_branch_names(name: str) -> None:
    assert check_branch(name) == name
    assert subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", ["", "-x", "a..b", "a b", "$(id)", "a;b", "a`b`", "a/", "x.lock", "a//b", "a@{1}",
                                  ".hidden", "a/.b", "a:b", "a~1", "a^", "a*", "a?", "a[b", "a\\b", "a|b", "a&b",
                                  "a>b", "a'b", 'a"b', "a!b", "a{b}", "a\tb", "a\x7fb", "@"])
def test_bad_branch_names(name: str) -> None:
    with pytest.raises(InvalidName):
        check_branch(name)


@pytest.mark.parametrize("pattern", ["release/*", "refs/pull/*/head", "v?.x", "*"])
def test_branch_patterns_take_wildcards(pattern: str) -> None:
    assert check_branch_pattern(pattern) == pattern
    with pytest.raises(InvalidName):
        check_branch(pattern)


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
    result = write_result(tmp_path, record, b"log text", junit, summary_dict("demo", SHA, "main", {"amd64": "failed"}))
    data = json.loads(result.read_text())
    assert data["schema"] == 1 and data["status"] == "failed" and data["attempt"] == 2
    assert data["duration"] == 2.25 and data["started_at"] == "2023-11-14T22:13:20.250Z"
    assert data["tests"] == {"total": 4, "passed": 2, "failed": 1, "errors": 1, "skipped": 0}
    assert path(tmp_path, File.LOG, "demo", SHA, "amd64").read_bytes() == b"log text"
    assert path(tmp_path, File.JUNIT, "demo", SHA, "amd64").read_bytes() == junit
    # The reader's side: the record comes back whole from its file.
    assert ResultRecord.from_dict(data) == record


def _recording_the_disk(monkeypatch) -> list[tuple[str, str]]:
    """What reaches the disk, in order: ("fsync", "") for a file or a folder ("fsync-dir",
    its name), ("rename", the file's name and, for a summary.json, arm64's status in it)."""
    from dispatcher.common import files

    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        name = Path(dst).name
        if name == "summary.json":
            name += ":" + json.loads(Path(src).read_bytes())["architectures"]["arm64"]
        events.append(("rename", name))
        real_replace(src, dst)

    def fsync(fd):
        events.append(("fsync", ""))
        real_fsync(fd)

    def fsync_dir(folder):
        events.append(("fsync-dir", Path(folder).name))
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            real_fsync(fd)
        finally:
            os.close(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(files, "fsync_dir", fsync_dir)
    return events


def test_arch_json_is_written_last_after_a_summary_that_counts_it(tmp_path: Path, monkeypatch) -> None:
    events = _recording_the_disk(monkeypatch)
    junit = b'<testsuite tests="1"><testcase name="t"/></testsuite>'
    record = ResultRecord(repo="demo", branch="main", commit=SHA, arch="arm64", runner="r1", status=Status.FLAKY,
                          exit_code=0, started_at=1.0, finished_at=2.0, attempt=2, tests=parse_junit(junit),
                          earlier=(Attempt(1, "r0", Status.FAILED, 1, 0.5, 0.9, "exit 1", b"first"),))
    write_result(tmp_path, record, b"log", junit, summary_dict("demo", SHA, "main", {"arm64": Status.FLAKY}))
    renames = [name for kind, name in events if kind == "rename"]
    assert renames == ["arm64.attempt1.log", "arm64.log", "arm64.junit.xml", "summary.json:flaky", "arm64.json"]
    # Every file durable before any is renamed, and the renames before arm64.json durable
    # (their folder fsynced) before it is renamed.
    first_rename = events.index(("rename", "arm64.attempt1.log"))
    assert [kind for kind, _ in events[:first_rename]] == ["fsync"] * 5
    assert ("fsync-dir", SHA) in events[events.index(("rename", "summary.json:flaky")):
                                        events.index(("rename", "arm64.json"))]
    assert events[-1] == ("fsync-dir", SHA)


def test_a_batch_of_results_renames_every_arch_json_after_all_else_with_shared_folder_fsyncs(
        tmp_path: Path, monkeypatch) -> None:
    from dispatcher.common.files import Batch

    events = _recording_the_disk(monkeypatch)
    batch = Batch()
    for arch, status in (("amd64", Status.PASSED), ("arm64", Status.FAILED)):
        record = ResultRecord(repo="demo", branch="main", commit=SHA, arch=arch, runner="r1", status=status,
                              exit_code=0, started_at=1.0, finished_at=2.0, attempt=1)
        write_result(tmp_path, record, b"log", b"", summary_dict("demo", SHA, "main", {"amd64": Status.PASSED,
                                                                                        "arm64": Status.FAILED}),
                     batch=batch)
    assert not (tmp_path / "demo" / SHA / "amd64.json").exists()  # nothing visible before the commit
    batch.commit()
    renames = [name for kind, name in events if kind == "rename"]
    # One summary.json (the later of two identical writes), every <arch>.json last.
    assert renames == ["amd64.log", "arm64.log", "summary.json:failed", "amd64.json", "arm64.json"]
    assert [kind for kind, _ in events].count("fsync-dir") == 2  # one per step, not one per file
    assert not [p for p in (tmp_path / "demo" / SHA).iterdir() if p.name.startswith(".polyarch-tmp-")]


def test_from_dict_tolerates_missing_optional_keys() -> None:
    minimal = {"repo": "demo", "commit": SHA, "arch": "amd64", "status": "passed"}
    record = ResultRecord.from_dict(minimal)
    assert record.status == Status.PASSED and record.tests is None and record.earlier == () and record.attempt == 1
    with pytest.raises((KeyError, ValueError)):
        ResultRecord.from_dict({"repo": "demo", "commit": SHA, "arch": "amd64", "status": "sideways"})


def test_the_layout_names_the_links_between_files() -> None:
    data = ResultRecord("demo", "main", SHA, "arm64", "r", Status.PASSED, 0, 1.0, 2.0, 1).to_dict()
    assert data["log"] == name(File.LOG, "arm64") == "arm64.log" and data["junit"] is None


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
