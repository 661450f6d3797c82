"""Mixed versions during an upgrade: this observer and runner against the dispatcher of the
previous release (its code checked out from this repository's history), which refuses
the wire fields added since. Nothing is lost: each side notices and goes on without."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, Daemon, Polyarch

pytestmark = pytest.mark.daemons

PREVIOUS = "9e12ff8"  # the last commit that landed before CommitInfo.parent and Result.next_job


def test_this_runner_and_observer_work_with_the_previous_dispatcher(polyarch: Polyarch, tmp_path: Path) -> None:
    old = tmp_path / "previous"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS], capture_output=True)
    assert archive.returncode == 0, f"git archive {PREVIOUS} (needs this repository's history): {archive.stderr!r}"
    subprocess.run(["tar", "x", "-C", str(old)], input=archive.stdout, check=True)
    dispatcher = Daemon(polyarch, "dispatcher", name="previous-dispatcher", prefix=("env", f"PYTHONPATH={old}"))
    polyarch.daemons.append(dispatcher)
    dispatcher.start().wait_ready()
    runner = polyarch.runner("r1")
    first = polyarch.repo.commit("exit 0")  # the branch's first sighting: its head alone
    observer = polyarch.observer()
    polyarch.wait_results([first])
    shas = [polyarch.repo.commit("exit 0"), polyarch.repo.commit("exit 1"), polyarch.repo.commit("exit 0")]
    results = polyarch.wait_results(shas)
    assert [results[s]["status"] for s in shas] == ["passed", "failed", "passed"]
    # Each side noticed once and went on: no result was refused or sent twice.
    assert runner.log().count("does not take next_job") == 1
    assert observer.log().count("does not know commit parents") == 1
    assert "next_job" not in dispatcher.log() and dispatcher.log().count("unknown field 'parent'") == 1
    assert all(results[s]["attempt"] == 1 for s in shas)
