"""Hostile jobs and runners (issue 19): what a commit under test, or a second process
posing as a runner, tries in order to change other commits' results.

Covered so far: git hooks and config planted through the mirror, a second runner under
a taken name, the runner's environment (credentials a unit gave it), and (in
tests/test_hub.py) results, heartbeats and releases for another runner's lease. Jobs still run as the runner's own user: reading the secret is not yet
refused (see the README's "Isolation" section).
"""

from __future__ import annotations

from conftest import Polyarch, wait_for
from faults.conftest import record

PLANT = """\
common=$(git rev-parse --git-common-dir)
mkdir -p "$common/hooks"
printf '#!/bin/sh\\ntouch "%s"\\nprintf "exit 0\\\\n" > test.sh\\n' "$PWD/../hook-ran" > "$common/hooks/post-checkout"
chmod +x "$common/hooks/post-checkout"
git config core.fsmonitor "touch $PWD/../fsmonitor-ran; false"
exit 0
"""


def test_a_hook_planted_in_the_mirror_never_runs(polyarch: Polyarch) -> None:
    """A commit plants a post-checkout hook that would turn every later test.sh into
    `exit 0`, and an fsmonitor command: the runner's git runs neither, so the next
    failing commit still fails."""
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    first = polyarch.repo.commit(PLANT)
    polyarch.wait_results([first])
    assert polyarch.result(first)["status"] == "passed", (polyarch.results / "demo" / first / "amd64.log").read_text()
    broken = polyarch.repo.commit("echo broken; exit 1")
    assert polyarch.wait_results([broken])[broken]["status"] == "failed"
    planted = [p for p in polyarch.root.rglob("hooks/post-checkout")]
    assert planted, "the hostile commit did not manage to plant its hook; the test proves nothing"
    assert not list(polyarch.root.rglob("hook-ran")) and not list(polyarch.root.rglob("fsmonitor-ran"))
    assert runner.alive
    record("hostile", "a git hook and fsmonitor planted in the mirror", commits=2, refused=True)


def test_a_second_runner_under_a_taken_name_is_refused(polyarch: Polyarch) -> None:
    """Two processes under one name would share a worktree and kill each other's jobs."""
    polyarch.dispatcher()
    first = polyarch.runner("r1")
    lock = polyarch.root / "var" / "runner" / "r1" / ".lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid),
             what="the first runner to lock its work folder")
    second = polyarch.cli("runner", "serve", "--config", str(polyarch.config), "--name", "r1")
    assert second.returncode == 2, second.stderr
    assert "runner r1 is already running on this host (pid " in second.stderr
    assert "give this one another name (--name)" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    sha = polyarch.repo.commit("exit 0")
    polyarch.observer()
    assert polyarch.wait_results([sha])[sha]["status"] == "passed" and first.alive
    record("hostile", "a second runner under a name already running", refused=True)


def test_a_job_gets_a_clean_environment_not_the_runners(polyarch: Polyarch) -> None:
    """Whatever the runner's unit put in its environment (a cloud key, systemd's notify
    socket) stays the runner's; a lab's own variable reaches jobs when pass_env names it."""
    polyarch.write_config(runner_settings='pass_env = ["LAB_TOOLCHAIN"]')
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1", prefix=("env", "AWS_SECRET_ACCESS_KEY=hunter2", "LAB_TOOLCHAIN=/opt/tc",
                                  "INVOCATION_ID=0123abcd"))
    polyarch.observer()
    sha = polyarch.repo.commit("env | sort; exit 0")
    polyarch.wait_results([sha])
    log = (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert "LAB_TOOLCHAIN=/opt/tc" in log and f"POLYARCH_COMMIT={sha}" in log and "PATH=" in log
    for leaked in ("hunter2", "INVOCATION_ID", "NOTIFY_SOCKET", "PYTHONPATH"):
        assert leaked not in log, log
    record("hostile", "the runner's environment (credentials, notify socket) read by a job", refused=True)
