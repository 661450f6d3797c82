"""Jobs leased ahead, with real daemons: a runner checks out its next job while one runs.

The rule itself (only behind short jobs, one at a time) is test_hub.py's; here, what a
lab must be able to rely on: every result once, each job in a clean worktree, and a
runner that dies or stops while it holds a job ahead loses neither job.
"""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

import pytest

from conftest import Daemon, GitRepo, Polyarch, processes_running, wait_for

pytestmark = pytest.mark.daemons

# Fails if anything an earlier job left in the worktree is still there, then leaves
# something for the next job of that worktree to find.
CLEAN = "test ! -e left-by-a-job || exit 7; touch left-by-a-job; sleep 0.2"


def _push_together(repo: GitRepo, *scripts: str) -> list[str]:
    """Commits made on a side branch, then main moved to them in one update (one push):
    the observer sees them at once, so the second is queued when the first starts."""
    repo.git("checkout", "-q", "-b", "side")
    shas = [repo.commit(script) for script in scripts]
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--ff-only", "side")
    repo.git("branch", "-q", "-D", "side")
    return shas


def _learn_short(polyarch: Polyarch) -> None:
    """One quick result: the dispatcher now knows demo's jobs are short."""
    first = polyarch.repo.commit("exit 0")
    polyarch.wait_results([first])


def _holding_a_job_ahead(polyarch: Polyarch, name: str, first: str,
                         second: str = "exit 0") -> tuple[Daemon, str, str]:
    """Daemons up, then two commits pushed together: `first` runs on runner `name` (it
    must wait for something) while the second is leased ahead behind it. Returns the
    runner and the two commits."""
    polyarch.dispatcher()
    runner = polyarch.runner(name)
    polyarch.observer()
    _learn_short(polyarch)
    held, behind = _push_together(polyarch.repo, first, second)
    wait_for(lambda: "ahead (attempt 1)" in runner.log(), what="the second job to be leased ahead")
    return runner, held, behind


def test_a_burst_runs_with_jobs_leased_ahead_each_once_in_a_clean_worktree(polyarch: Polyarch) -> None:
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    _learn_short(polyarch)
    burst = _push_together(polyarch.repo, *[CLEAN] * 8)
    results = polyarch.wait_results(burst)
    assert [(r["status"], r["attempt"], r["runner"]) for r in results.values()] == [("passed", 1, "r1")] * 8
    assert runner.log().count("ahead (attempt 1); checking it out") >= 5, runner.log()
    # Both worktree slots were used (a job ahead is checked out in the one not running).
    work = polyarch.root / "var/runner/r1"
    assert (work / "checkouts" / "demo").is_dir() and (work / "checkouts-ahead" / "demo").is_dir()


def _waiting_in(folder: Path) -> list[int]:
    """Host pids of processes whose working folder is `folder` (a jail enters the job's
    checkout before it waits for its release)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(folder):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_job_armed_ahead_waits_in_its_jail_and_runs_only_after_the_one_before(polyarch: Polyarch) -> None:
    gate, ran = polyarch.shared / "gate", polyarch.shared / "behind-ran"
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    _learn_short(polyarch)
    held, behind = _push_together(polyarch.repo, f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                  f"date +%s.%N > {ran}")
    # Its jail is built (namespaces, mounts, the job user in its checkout) and waits there.
    armed_in = polyarch.root / "var/runner/r1/checkouts-ahead/demo"
    wait_for(lambda: _waiting_in(armed_in), what=f"a jail waiting in {armed_in}")
    assert "ahead (attempt 1)" in runner.log()
    assert not ran.exists(), "the job ahead ran before its turn"
    gate.touch()
    results = polyarch.wait_results([held, behind])
    assert [results[s]["status"] for s in (held, behind)] == ["passed", "passed"]
    assert float(ran.read_text()) >= _seconds(results[held]["finished_at"]) - 0.001
    assert _seconds(results[behind]["started_at"]) >= _seconds(results[held]["finished_at"]) - 0.001


def test_a_runner_killed_while_holding_a_job_ahead_loses_neither_job(polyarch: Polyarch) -> None:
    gate = polyarch.shared / "gate"
    # The first waits on its first attempt (as `sleep 300.31`, to be found from here).
    doomed, held, behind = _holding_a_job_ahead(polyarch, "doomed", f'[ "$POLYARCH_ATTEMPT" = 1 ] && while [ ! -e '
                                                                    f'{gate} ]; do sleep 300.31 & wait; done; exit 0')
    assert processes_running("sleep", "300.31")
    doomed.kill()
    # Restarted, it kills what its crash left running (the marker of each job it ran) and
    # gives back both leases by asking for work.
    polyarch.runner("doomed")
    wait_for(lambda: not processes_running("sleep", "300.31"), timeout=10, what="the crashed job's processes to die")
    results = polyarch.wait_results([held, behind], timeout=30)
    assert {s: (r["status"], r["attempt"]) for s, r in results.items()} == {held: ("passed", 2), behind: ("passed", 2)}


def test_a_runner_stopping_hands_back_its_job_ahead_and_another_runs_it(polyarch: Polyarch) -> None:
    gate = polyarch.shared / "gate"
    leaving, held, behind = _holding_a_job_ahead(polyarch, "leaving", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    leaving.signal(signal.SIGTERM)  # the first request: the running job ends, nothing new starts
    gate.touch()
    assert leaving.started.wait(timeout=30) == 0
    assert "handed back demo " + behind[:12] + ": runner stopping" in leaving.log()
    polyarch.runner("staying")
    results = polyarch.wait_results([held, behind], timeout=30)
    assert (results[held]["runner"], results[held]["attempt"]) == ("leaving", 1)
    assert results[behind]["runner"] == "staying" and results[behind]["status"] == "passed"


def test_a_job_cancelled_while_leased_ahead_is_dropped_and_the_runner_goes_on(polyarch: Polyarch) -> None:
    gate = polyarch.shared / "gate"
    ran = polyarch.shared / "behind-ran"
    runner, held, behind = _holding_a_job_ahead(polyarch, "r1", f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                                f"touch {ran}")
    out = polyarch.cli("dispatcher", "cancel", "--config", str(polyarch.config), "--repo", "demo", "--commit", behind)
    assert "1 job(s) cancelled" in out.stdout, out
    wait_for(lambda: "is no longer ours" in runner.log(), what="the runner to drop the cancelled job")
    gate.touch()
    after = polyarch.repo.commit("exit 0")
    results = polyarch.wait_results([held, behind, after])
    assert [results[s]["status"] for s in (held, behind, after)] == ["passed", "cancelled", "passed"]
    assert "running demo " + behind[:12] not in runner.log()
    jobs = polyarch.root / "var/runner/r1/jobs"  # the dropped job's folder went with it
    wait_for(lambda: not list(jobs.iterdir()), what=f"no job folder left in {jobs}")
    # Its jail was armed, then let go unreleased: nothing of it ran, nothing waits on.
    assert not ran.exists()
    assert not _waiting_in(polyarch.root / "var/runner/r1/checkouts-ahead/demo")
