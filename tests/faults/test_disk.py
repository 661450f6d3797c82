"""Full disks: the results folder and the state database, each on a tiny tmpfs."""

from __future__ import annotations


import pytest

from conftest import Polyarch, wait_for
from dispatcher.common.files import TMP_PREFIX
from faults.conftest import fill, record, state_value

pytestmark = pytest.mark.daemons


def _job_state(polyarch: Polyarch, sha: str) -> str:
    return str(state_value(polyarch.root, "SELECT state FROM jobs WHERE sha = ?", sha))


def test_full_results_disk_writes_nothing_partial_and_catches_up(polyarch: Polyarch, small_tmpfs) -> None:
    results = small_tmpfs("test_results", 512)
    first = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([first])
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}

    filler = fill(results)
    shas = polyarch.repo.burst(3, lambda i: "echo " + "x" * 2000 + "; exit 0")
    wait_for(lambda: f"cannot write result files for demo {shas[0][:12]}" in dispatcher.log(),
             what="the dispatcher to log the full disk")
    assert "No space left on device" in dispatcher.log()
    wait_for(lambda: all(_job_state(polyarch, s) == "recorded" for s in shas), what="all three results durable")
    # Nothing half-written, no temporaries, no result file, the job not marked done.
    assert not [p for p in results.rglob(TMP_PREFIX + "*")]
    for sha in shas:
        assert not (results / "demo" / sha / "amd64.json").exists()
        assert _job_state(polyarch, sha) == "recorded"
    # summary.json and the dashboard's pages are rewritten as results come; nothing else may change.
    assert all(p.read_bytes() == data for p, data in before.items()
               if p.name != "summary.json" and p.suffix != ".html")

    filler.unlink()  # space comes back: the files are written from the database
    written = polyarch.wait_results(shas, timeout=30)
    assert all(r["status"] == "passed" and r["attempt"] == 1 for r in written.values())
    # Marked done right after the files are written (one transaction per batch).
    wait_for(lambda: all(_job_state(polyarch, s) == "published" for s in shas), what="the jobs to be marked published")
    record("fault", "results disk full (tmpfs), then space returns", trials=1, commits=4, results=4,
           lost=0, duplicated=0)


def test_full_state_disk_refuses_new_work_and_keeps_what_it_had(polyarch: Polyarch, small_tmpfs) -> None:
    # Room for the WAL to grow to its checkpoint size (about 4 MB) once space is back.
    state = small_tmpfs("var/dispatcher", 16 * 1024)
    first = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    observer = polyarch.observer()
    polyarch.wait_results([first])

    filler = fill(state)
    shas = polyarch.repo.burst(30, lambda i: "exit 0")
    wait_for(lambda: "cannot write the state database" in dispatcher.log(),
             what="the dispatcher to refuse work it cannot record")
    wait_for(lambda: "unavailable" in observer.log(), what="the observer to hear the refusal")
    assert dispatcher.alive and observer.alive
    # What it had is still there and still readable.
    status = polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json")
    assert status.returncode == 0, status.stderr
    assert polyarch.result(first)["status"] == "passed"

    filler.unlink()
    results = polyarch.wait_results(shas, timeout=90)
    assert all(r["status"] == "passed" for r in results.values())
    assert len([p for p in (polyarch.results / "demo").iterdir() if p.is_dir()]) == 31
    record("fault", "state database disk full (tmpfs), then space returns", trials=1, commits=31, results=31,
           lost=0, duplicated=0)


def test_a_full_runner_disk_ends_the_job_error_once_and_never_loops(polyarch: Polyarch, small_tmpfs) -> None:
    work = small_tmpfs("var/runner", 32 * 1024)
    first = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([first])
    filler = fill(work)
    blocked = polyarch.repo.commit("echo " + "x" * 5000 + "; exit 0", files={"big.txt": "y" * 200_000})
    result = polyarch.wait_results([blocked], timeout=60)[blocked]
    # Ended once, with the reason: not handed back and leased again over and over.
    assert result["status"] == "error" and "var/runner" in result["reason"], result  # naming the full place
    assert dispatcher.log().count(f"leased demo {blocked[:12]}") == 1
    filler.unlink()  # space comes back: the next job runs as usual
    after = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([after])[after]["status"] == "passed"
    assert runner.alive
    record("fault", "runner work_dir disk full (tmpfs), then space returns", trials=1, commits=3, results=3,
           lost=0, duplicated=0)
