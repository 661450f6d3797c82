"""End to end with real processes: observer -> dispatcher -> runner -> test_results/."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import Polyarch, processes_running, wait_for

pytestmark = pytest.mark.daemons


def _all_result_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_commits_one_at_a_time_and_in_a_burst_get_the_right_status(polyarch: Polyarch, backend: str) -> None:
    first = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    # First sighting of the branch: its head only.
    assert polyarch.wait_results([first])[first]["status"] == "passed"

    one_by_one = []
    for script in ("exit 0", "echo broken >&2; exit 3", "exit 0"):
        one_by_one.append(polyarch.repo.commit(script))
        polyarch.wait_results([one_by_one[-1]])
    burst = polyarch.repo.burst(12, lambda i: "exit 1" if i == 5 else "exit 0")
    results = polyarch.wait_results(one_by_one + burst)

    statuses = [results[s]["status"] for s in one_by_one + burst]
    expected = ["passed", "failed", "passed"] + ["failed" if i == 5 else "passed" for i in range(12)]
    assert statuses == expected
    failed = results[one_by_one[1]]
    assert failed["exit_code"] == 3 and failed["attempt"] == 1 and failed["runner"] == "r1"
    log = (polyarch.results / "demo" / one_by_one[1] / "amd64.log").read_text()
    assert "broken" in log
    summary = json.loads((polyarch.results / "demo" / one_by_one[1] / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["architectures"] == {"amd64": "failed"}
    # Nothing half-written or temporary is left among the result files (a page being
    # rewritten this instant shows its temporary for a moment; a leftover would stay).
    wait_for(lambda: not [p for p in _all_result_files(polyarch.results) if p.name.startswith(".polyarch-tmp")],
             timeout=10, what="no temporary file among the results")

    status = polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json", "--limit", "100")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert len(data["commits"]) == 16
    assert {c["commit"]: c["status"] for c in data["commits"]}[one_by_one[1]] == "failed"


def _jails_ahead(runner_pid: int) -> list[int]:
    """The runner's jails started ahead of a job (runner/warm.py): `jail.py --orders FD`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--orders" in cmdline and f"POLYARCH_RUNNER_PID={runner_pid}".encode() in environ:
            found.append(int(entry))
    return found


def test_a_jail_started_ahead_runs_the_next_job_and_dies_with_its_runner(polyarch: Polyarch) -> None:
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    wait_for(lambda: _jails_ahead(runner.pid), what="a jail started ahead of the first job")
    [ahead] = _jails_ahead(runner.pid)
    first = polyarch.repo.commit("test \"$(id -un)\" = polyarch-job")  # isolated as ever
    polyarch.observer()
    assert polyarch.wait_results([first])[first]["status"] == "passed"
    # That jail ran the job (it is gone), and another waits for the next.
    wait_for(lambda: _jails_ahead(runner.pid) and ahead not in _jails_ahead(runner.pid),
             what="the next jail started ahead")
    pid = runner.pid
    runner.kill()
    wait_for(lambda: not _jails_ahead(pid), timeout=10, what="the idle jail to go with its runner")


def test_runner_killed_mid_job_loses_the_lease_and_another_runner_finishes(polyarch: Polyarch) -> None:
    pids = polyarch.shared
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.observer()
    doomed = polyarch.runner("doomed")
    wait_for(lambda: polyarch.result(polyarch.repo.git("rev-parse", "HEAD")), what="first result")
    # The test spawns a background child, records both pids, and sleeps: kill -9 the runner then.
    slow = polyarch.repo.commit(f"sleep 300.1 & touch {pids}/started-$POLYARCH_ATTEMPT; "
                                f"if [ $POLYARCH_ATTEMPT = 1 ]; then sleep 300.2; fi; exit 0")
    wait_for(lambda: (pids / "started-1").exists(), what="the job to start on the doomed runner")
    assert processes_running("sleep", "300.1") and processes_running("sleep", "300.2")
    doomed.kill()
    # No orphan: the job's whole process group dies with the runner.
    wait_for(lambda: not processes_running("sleep", "300.1") and not processes_running("sleep", "300.2"),
             timeout=10, what="the orphaned test processes to die")

    polyarch.runner("rescuer")
    result = polyarch.wait_results([slow], timeout=30)[slow]
    assert result["status"] == "passed"
    assert result["attempt"] == 2 and result["runner"] == "rescuer"
    assert "expired" in polyarch.daemons[0].log()
    # Restarted under its own name, the killed runner clears the checkout its crash left.
    leftovers = polyarch.root / "var/runner/doomed/jobs"
    assert list(leftovers.iterdir())
    polyarch.runner("doomed")
    wait_for(lambda: not leftovers.exists() or not list(leftovers.iterdir()), what="the crash leftovers to go")



def test_dispatcher_killed_mid_burst_loses_nothing_and_duplicates_nothing(polyarch: Polyarch, backend: str) -> None:
    polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.observer()
    polyarch.runner("r1")
    polyarch.runner("r2")
    wait_for(lambda: polyarch.result(polyarch.repo.git("rev-parse", "HEAD")), what="first result")
    burst = polyarch.repo.burst(30, lambda i: "sleep 0.05")
    wait_for(lambda: sum(1 for s in burst if polyarch.result(s)) >= 3, what="a few burst results")
    dispatcher.kill()
    time.sleep(0.5)  # commits keep landing while it is down
    later = polyarch.repo.burst(5)
    polyarch.dispatcher()
    results = polyarch.wait_results(burst + later, timeout=90)
    assert all(r["status"] == "passed" for r in results.values())
    # Exactly one result per commit: one folder each, one arch file each, no temporaries.
    folders = [p for p in (polyarch.results / "demo").iterdir() if p.is_dir()]
    assert len(folders) == 36
    expected = ["amd64.json", "amd64.log", "index.html", "summary.json"]
    for folder in folders:
        # index.html: the dashboard's page for the commit. The pages are rewritten as work
        # goes on, so a write in progress may show its temporary file for a moment; one a
        # crash left behind would stay, and fail this.
        wait_for(lambda f=folder: sorted(p.name for p in f.iterdir()) == expected,
                 timeout=10, what=f"exactly {expected} in {folder.name}")


def test_commits_pushed_while_the_observer_is_down_are_tested_after_it_restarts(polyarch: Polyarch) -> None:
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    observer = polyarch.observer()
    wait_for(lambda: polyarch.result(polyarch.repo.git("rev-parse", "HEAD")), what="first result")
    assert observer.stop() == 0
    missed = polyarch.repo.burst(4, lambda i: "exit 1" if i == 2 else "exit 0")
    polyarch.observer()
    results = polyarch.wait_results(missed)
    assert [r["status"] for r in (results[s] for s in missed)] == ["passed", "passed", "failed", "passed"]


def test_result_is_kept_by_the_runner_while_the_dispatcher_is_down(polyarch: Polyarch, backend: str) -> None:
    gate = polyarch.shared / "gate"
    polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.observer()
    polyarch.runner("r1")
    wait_for(lambda: polyarch.result(polyarch.repo.git("rev-parse", "HEAD")), what="first result")
    sha = polyarch.repo.commit(f"touch {gate}.started; while [ ! -e {gate} ]; do sleep 0.05; done; exit 0")
    wait_for(lambda: Path(f"{gate}.started").exists(), what="the job to start")
    dispatcher.stop()
    gate.touch()  # the job ends while nobody listens
    wait_for(lambda: list((polyarch.root / "var/runner/r1/outbox").glob("*.json")), what="the result to be spooled")
    polyarch.dispatcher()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "passed" and result["attempt"] == 1


def test_timeout_kills_the_whole_process_group(polyarch: Polyarch) -> None:
    # timeout x timeout_factor is what counts: 4 s x 0.25 = 1 s.
    polyarch.write_config(timeout=4, extra_repos="\n[arch.amd64]\ntimeout_factor = 0.25\n")
    sha = polyarch.repo.commit("sleep 60.3 & sleep 60")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "timeout" and result["exit_code"] is None
    assert "timed out after 1 s (timeout 4 s x timeout_factor 0.25)" in result["reason"]
    assert result["emulated"] is False and result["kernel"]
    wait_for(lambda: not processes_running("sleep", "60.3"), timeout=5, what="the background child to be killed")


def test_an_architectures_own_timeout_is_its_limit_not_multiplied(polyarch: Polyarch) -> None:
    # The config multiplies amd64's timeouts by 20; the repository's [arch.amd64] timeout
    # = 1 is still 1 s, and the reason names that limit.
    polyarch.write_config(timeout=30, extra_repos="\n[arch.amd64]\ntimeout_factor = 20\n")
    sha = polyarch.repo.commit("sleep 60", files={".polyarch.toml": "[arch.amd64]\ntimeout = 1\n"})
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "timeout", result
    assert "timed out after 1 s ([arch.amd64] timeout in .polyarch.toml)" in result["reason"]


def test_job_ends_as_error_after_max_attempts_lost_runners(polyarch: Polyarch) -> None:
    polyarch.write_config(max_attempts=2, heartbeat_timeout=1)
    started = polyarch.shared / "started"
    sha = polyarch.repo.commit(f"echo x >> {started}; sleep 300")
    polyarch.dispatcher()
    polyarch.observer()
    for attempt in (1, 2):
        runner = polyarch.runner(f"r{attempt}")
        wait_for(lambda n=attempt: started.exists() and len(started.read_text().split()) == n,
                 what=f"attempt {attempt} to start")
        runner.kill()
    result = polyarch.wait_results([sha], timeout=20)[sha]
    assert result["status"] == "error" and result["attempt"] == 2
    assert "max_attempts = 2" in result["reason"]


def test_sigterm_waits_stop_grace_then_hands_the_job_back(polyarch: Polyarch) -> None:
    polyarch.write_config(heartbeat_timeout=30, stop_grace=1)
    started = polyarch.shared / "started"
    sha = polyarch.repo.commit(f"echo x >> {started}; if [ $(wc -l < {started}) = 1 ]; then sleep 300; fi")
    polyarch.dispatcher()
    polyarch.observer()
    runner = polyarch.runner("r1")
    wait_for(started.exists, what="the job to start")
    runner.signal(signal.SIGTERM)  # the job outlives stop_grace: it is stopped and handed back
    assert runner.stop(timeout=15) == 0
    assert "handed back" in runner.log()
    # Handed back, not expired: the next runner gets it at once, as attempt 1 again.
    polyarch.runner("r2")
    result = polyarch.wait_results([sha], timeout=15)[sha]
    assert result["status"] == "passed" and result["runner"] == "r2" and result["attempt"] == 1


def test_polyarch_toml_in_the_repository_overrides_the_test_command(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 1", files={".polyarch.toml": 'test_command = "echo from-repo-file"\n'})
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "passed"
    assert "from-repo-file" in (polyarch.results / "demo" / sha / "amd64.log").read_text()


def test_junit_written_by_the_test_command_is_counted(polyarch: Polyarch) -> None:
    junit = ('<testsuite tests="3" failures="1" errors="0" skipped="1">'
             '<testcase name="a"/><testcase name="b"><failure/></testcase><testcase name="c"><skipped/></testcase>'
             '</testsuite>')
    sha = polyarch.repo.commit(f"echo '{junit}' > $POLYARCH_JUNIT; exit 1")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["tests"] == {"total": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert (polyarch.results / "demo" / sha / "amd64.junit.xml").read_text().startswith("<testsuite")


def test_env_of_the_test_command(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit('test "$POLYARCH_REPO" = demo && test "$POLYARCH_ARCH" = amd64 && '
                               'test "$POLYARCH_COMMIT" = "$(git rev-parse HEAD)"')
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    assert polyarch.wait_results([sha])[sha]["status"] == "passed"


def test_a_commit_submitted_by_hand_gets_its_author_and_subject(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0", message="calc: described by the runner")
    polyarch.dispatcher()
    polyarch.runner("r1")  # no observer: the dispatcher hears of the commit by id only
    cfg = ("--config", str(polyarch.config))
    assert polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", sha).returncode == 0
    polyarch.wait_results([sha])
    [line] = json.loads(polyarch.cli("dispatcher", "status", *cfg, "--json").stdout)["commits"]
    assert (line["author"], line["subject"]) == ("Dev", "calc: described by the runner")
