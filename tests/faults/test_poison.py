"""Poison inputs: one commit, one file or one value that anyone who can push controls must
never stop polyarch. Each case below failed before its fix (issue 20)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

from conftest import Polyarch, skip_unless_ci, wait_for
from faults.conftest import record


def _raw_commit(polyarch: Polyarch, author: bytes, subject: bytes) -> str:
    """A commit whose author and subject bytes are not UTF-8, written as a raw object (git
    itself would re-encode them), on top of main."""
    repo = polyarch.repo
    head = repo.git("rev-parse", "HEAD")
    tree = repo.git("rev-parse", "HEAD^{tree}")
    body = (b"tree " + tree.encode() + b"\nparent " + head.encode() + b"\nauthor " + author
            + b" <a@example.invalid> 1700000000 +0000\ncommitter C <c@example.invalid> 1700000000 +0000\n\n"
            + subject + b"\n")
    sha = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=repo.path, input=body,
                         capture_output=True, check=True).stdout.decode().strip()
    repo.git("update-ref", "refs/heads/main", sha)
    repo.git("reset", "-q", "--hard", sha)
    return sha


def test_a_commit_whose_author_is_not_utf8_never_stops_its_branch(polyarch: Polyarch) -> None:
    first = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    observer = polyarch.observer()
    polyarch.wait_results([first])
    bad = _raw_commit(polyarch, b"Jos\xe9 \xff\xfe", b"caf\xe9 [/] \xff")
    after = polyarch.repo.commit("exit 0")
    results = polyarch.wait_results([bad, after])
    assert results[bad]["status"] == "passed" and results[after]["status"] == "passed"
    assert "Traceback" not in observer.log()
    status = polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json")
    [line] = [c for c in json.loads(status.stdout)["commits"] if c["commit"] == bad]
    assert line["author"] == "Jos\ufffd \ufffd\ufffd"
    record("poison", "a commit whose author and subject are not UTF-8", commits=3)


def test_markup_in_a_subject_is_text_in_status_and_wait(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0", message="fix [/] and [bold red]not markup[/bold red] [link=x]")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([sha])
    cfg = ("--config", str(polyarch.config))
    out = polyarch.cli("dispatcher", "status", *cfg)
    assert out.returncode == 0 and "fix [/] and" in out.stdout, out.stderr
    gate = polyarch.cli("dispatcher", "wait", *cfg, "--repo", "demo", "--commit", sha, "--timeout", "30")
    assert gate.returncode == 0, gate.stdout + gate.stderr  # passed: the subject changes nothing
    record("poison", "rich markup in a commit subject (status, wait)", commits=1)


def test_junit_in_an_unknown_encoding_never_stops_publishing(polyarch: Polyarch) -> None:
    poison = ("printf '<?xml version=\"1.0\" encoding=\"x-foo\"?><testsuite tests=\"1\"/>' > \"$POLYARCH_JUNIT\"; "
              "exit 0")
    bad = polyarch.repo.commit(poison)
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([bad])
    after = polyarch.repo.commit("exit 0")
    results = polyarch.wait_results([bad, after])
    assert results[bad]["status"] == "passed" and results[bad]["tests"] is None  # not JUnit we can read
    assert results[after]["status"] == "passed"
    record("poison", "JUnit XML in an encoding Python does not know", commits=2)


def test_a_nan_timeout_in_the_repo_file_is_an_error_naming_it(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0", files={".polyarch.toml": "timeout = nan\n"})
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "error"
    assert ".polyarch.toml: timeout: must be a finite number greater than 0, got nan" in result["reason"]
    record("poison", "timeout = nan in .polyarch.toml", commits=1)


def test_a_second_dispatcher_on_the_same_state_refuses_to_start(polyarch: Polyarch) -> None:
    first = polyarch.dispatcher()
    out = polyarch.cli("dispatcher", "serve", "--config", str(polyarch.config))
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "another dispatcher" in line and "var/dispatcher" in line
    assert first.alive
    record("poison", "a second dispatcher started on the same state_dir", starts=1)


def test_a_stalled_dispatcher_expires_no_healthy_lease(polyarch: Polyarch) -> None:
    # heartbeat_timeout 2 s; the dispatcher is stopped for 5 s in the middle of a job.
    # When it resumes, the runner's unread heartbeats must count: the job finishes on its
    # first attempt instead of being taken away and run again.
    polyarch.write_config(heartbeat_timeout=2)
    sha = polyarch.repo.commit("sleep 6; exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    wait_for(lambda: "leased" in dispatcher.log(), what="the job to be leased")
    dispatcher.signal(signal.SIGSTOP)
    time.sleep(5)  # the stall itself is the fault injected here, not a wait for a condition
    dispatcher.signal(signal.SIGCONT)
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "passed" and result["attempt"] == 1, result
    assert "expired" not in dispatcher.log() and "stalled for" in dispatcher.log()
    record("stuck", "dispatcher stalled (SIGSTOP 5 s) with heartbeat_timeout 2 s", leases=1)


def test_hooks_run_at_least_once_across_a_dispatcher_kill(polyarch: Polyarch, tmp_path) -> None:
    # The hook takes long; the dispatcher is killed while it runs. Recorded with the result,
    # it runs again after the restart, with the same POLYARCH_HOOK_ID.
    seen = tmp_path / "hooks"
    seen.mkdir()
    polyarch.write_config(repo_settings=f'on_result = "echo $POLYARCH_HOOK_ID >> {seen}/started; sleep 3; '
                                        f'echo $POLYARCH_HOOK_ID >> {seen}/done"\nhook_timeout = 30')
    sha = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([sha])
    wait_for(lambda: (seen / "started").exists(), what="the hook to start")
    dispatcher.kill()
    polyarch.dispatcher()
    # At least once: the restarted dispatcher runs it again, with the same id.
    wait_for(lambda: (seen / "started").read_text().split() == ["1", "1"], timeout=30,
             what="the hook to start again after the restart")
    wait_for(lambda: (seen / "done").exists(), timeout=30, what="the hook to finish")
    assert set((seen / "done").read_text().split()) == {"1"}
    record("stuck", "a hook running when the dispatcher is SIGKILLed", hooks=1, lost=0)


def test_a_job_that_turns_its_output_files_into_fifos_does_not_wedge_the_runner(polyarch: Polyarch) -> None:
    trap = ('d=$(dirname "$POLYARCH_JUNIT"); echo before; rm -f "$d/output.log"; mkfifo "$d/output.log"; '
            'mkfifo "$POLYARCH_JUNIT"; exit 0')
    bad = polyarch.repo.commit(trap)
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([bad])[bad]
    assert result["status"] == "passed" and result["tests"] is None
    assert "before" in (polyarch.results / "demo" / bad / "amd64.log").read_text()
    after = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([after])[after]["status"] == "passed"
    assert runner.stop(timeout=30) == 0  # SIGTERM still works
    record("poison", "a job that replaces its log and JUnit files with FIFOs", commits=2)


def test_a_job_that_deletes_its_job_folder_ends_error_and_never_loops(polyarch: Polyarch) -> None:
    trap = 'rm -rf "$(dirname "$POLYARCH_JUNIT")"; echo "/" > /dev/null; exit 0'
    bad = polyarch.repo.commit(trap)
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    result = polyarch.wait_results([bad])[bad]
    after = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([after])[after]["status"] == "passed"
    # Ended once, as a result: never handed back and leased again in a loop.
    assert dispatcher.log().count("leased demo " + bad[:12]) == 1, dispatcher.log()
    assert result["status"] in ("passed", "error")
    record("poison", "a job that deletes its own job folder", commits=2)


def test_a_file_the_runner_cannot_delete_does_not_poison_its_later_jobs(polyarch: Polyarch) -> None:
    """A job cannot make a file immutable (it is not root: chattr is refused); a mode-000
    folder it leaves is still removed. A worktree file even root cannot delete (made
    immutable here, by this side, while the job waits) is set aside, and later jobs pass."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        skip_unless_ci("needs root and chattr (e2fsprogs): run bash scripts/test.sh as root")
    gate = polyarch.shared / "gate"
    trap = (f"touch stuck planted && chattr +i stuck; echo chattr exit $?; mkdir -p locked && chmod 000 locked; "
            f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 0")
    bad = polyarch.repo.commit(trap)
    try:
        polyarch.dispatcher()
        runner = polyarch.runner("r1")
        polyarch.observer()
        planted = wait_for(lambda: list(polyarch.root.glob("var/runner/r1/checkouts/*/planted")),
                           what="the job to start")
        subprocess.run(["chattr", "+i", str(planted[0])], check=True)
        gate.touch()
        polyarch.wait_results([bad])
        log = (polyarch.results / "demo" / bad / "amd64.log").read_text()
        assert "Operation not permitted" in log and "chattr exit 1" in log, log
        later = [polyarch.repo.commit("exit 0") for _ in range(2)]
        results = polyarch.wait_results(later)
        assert all(r["status"] == "passed" for r in results.values()), results
        wait_for(lambda: "moved it to" in runner.log() or "fresh worktree beside it" in runner.log(),
                 what="the stuck worktree to be set aside")
        runner.stop()
        restarted = polyarch.runner("r1")  # across a restart too
        again = polyarch.repo.commit("exit 0")
        assert polyarch.wait_results([again])[again]["status"] == "passed"
        assert restarted.alive
    finally:
        subprocess.run(["chattr", "-R", "-i", str(polyarch.root)], capture_output=True)
    record("poison", "a job tries chattr +i (refused) and leaves a mode-000 folder; a file even root cannot "
                     "delete in its worktree", commits=4)
