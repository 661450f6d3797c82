"""Running a test command: process group, timeout, output cap (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dispatcher.common.errors import ConfigError
from runner.jobenv import job_environment
from runner.execute import GUARD, CappedLog, Guard, Outcome, Process
from runner.repoconf import JobSettings, settings_for

import pytest

from tests.conftest import wait_for


@pytest.fixture(scope="module")
def guard():
    guard = Guard()
    guard.start()
    yield guard
    guard.close()


def run(tmp_path: Path, command: str, guard: Guard, timeout: float = 10, limit: int = 1 << 20):
    proc = Process(command, tmp_path, dict(os.environ), tmp_path / "out.log", limit, guard)
    return proc.wait(timeout, kill_grace=1), (tmp_path / "out.log").read_bytes()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_exit_code_and_output(tmp_path: Path, guard: Guard) -> None:
    ex, out = run(tmp_path, "echo out; echo err >&2; exit 7", guard)
    assert ex.outcome == Outcome.EXITED and ex.exit_code == 7
    assert out == b"out\nerr\n"


def test_a_shell_killed_by_a_signal_exits_128_plus_the_signal(tmp_path: Path, guard: Guard) -> None:
    ex, _ = run(tmp_path, "kill -SEGV $$", guard)
    assert ex.outcome == Outcome.EXITED and ex.exit_code == 128 + signal.SIGSEGV


def test_timeout_kills_background_children_too(tmp_path: Path, guard: Guard) -> None:
    started = time.monotonic()
    ex, _ = run(tmp_path, f"sleep 30 & echo $! > {tmp_path}/pid; sleep 30", guard, timeout=0.5)
    assert ex.outcome == Outcome.TIMED_OUT and ex.exit_code is None
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    # SIGKILL is sent by now; on a loaded machine the child may take a moment to die.
    wait_for(lambda: _gone(pid), timeout=5, what=f"the background child {pid} to die")


def _gone(pid: int) -> bool:
    try:
        return "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True


def test_term_ignoring_command_is_killed_after_the_grace(tmp_path: Path, guard: Guard) -> None:
    ex, _ = run(tmp_path, "trap '' TERM; sleep 30", guard, timeout=0.3)
    assert ex.outcome == Outcome.TIMED_OUT


def test_output_cap_keeps_head_and_tail_and_marks_the_cut(tmp_path: Path, guard: Guard) -> None:
    ex, out = run(tmp_path, "echo FIRST; head -c 100000 /dev/zero | tr '\\0' x; echo; echo LAST", guard, limit=1000)
    assert ex.truncated
    assert out.startswith(b"FIRST") and out.rstrip().endswith(b"LAST")
    assert b"[polyarch: output truncated:" in out and len(out) < 1100


def test_guard_kills_announced_groups_and_marked_processes_when_its_runner_goes(tmp_path: Path) -> None:
    """The guard's stdin closing is the runner's death: announced groups and any process
    carrying the runner's mark die, other processes live."""
    fake_runner_pid = "999999999"
    announced = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    unannounced = subprocess.Popen(["sleep", "60"], env=dict(os.environ, POLYARCH_RUNNER_PID=fake_runner_pid))
    bystander = subprocess.Popen(["sleep", "60"], env=dict(os.environ, POLYARCH_RUNNER_PID="1"))
    guard = subprocess.Popen([sys.executable, "-I", "-S", str(GUARD), fake_runner_pid], stdin=subprocess.PIPE)
    try:
        assert guard.stdin is not None
        guard.stdin.write(f"+{announced.pid}\n+12345\n-12345\n".encode())
        guard.stdin.flush()
        time.sleep(0.3)
        assert announced.poll() is None and unannounced.poll() is None  # alive while the runner is
        guard.stdin.close()
        assert guard.wait(timeout=10) == 0
        assert announced.wait(timeout=5) == -signal.SIGKILL
        assert unannounced.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for proc in (announced, unannounced, bystander, guard):
            proc.kill()
            proc.wait()


def test_a_dead_guard_is_replaced_and_told_the_running_groups(tmp_path: Path) -> None:
    guard = Guard()
    guard.start()
    job = Process("sleep 60", tmp_path, dict(os.environ), tmp_path / "out.log", 1 << 20, guard)
    try:
        first = guard._proc
        assert first is not None
        first.kill()  # an OOM kill, say
        first.wait()
        other = Process("true", tmp_path, dict(os.environ), tmp_path / "out2.log", 1 << 20, guard)
        other.wait(10, kill_grace=1)
        assert guard._proc is not None and guard._proc.pid != first.pid
        # The new guard knows the first job: closing it as a dying runner would kills it.
        assert guard._proc.stdin is not None
        guard._proc.stdin.close()
        guard._proc.wait(timeout=10)
        wait_for(lambda: not _alive(job.pgid), timeout=10, what="the job the replaced guard was told about to die")
    finally:
        job.request_stop()
        job.wait(10, kill_grace=0.1)
        guard.close()


def test_capped_log_under_the_limit_is_untouched(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "l", 10)
    for chunk in (b"abc", b"def", b"gh"):
        log.write(chunk)
    assert not log.close()
    assert (tmp_path / "l").read_bytes() == b"abcdefgh"


def test_repo_file_overrides_per_arch(tmp_path: Path) -> None:
    default = JobSettings("make check", 600)
    assert settings_for(tmp_path, "amd64", default) == default
    (tmp_path / ".polyarch.toml").write_text('test_command = "a"\n[arch.aarch64]\ntest_command = "b"\ntimeout = 9\n')
    assert settings_for(tmp_path, "amd64", default) == JobSettings("a", 600)
    assert settings_for(tmp_path, "arm64", default) == JobSettings("b", 600, arch_timeout=9)
    # The arch's own timeout is its limit: not multiplied by the (emulated) factor.
    assert settings_for(tmp_path, "arm64", JobSettings("m", 60, 20)).limit == 9
    assert settings_for(tmp_path, "amd64", JobSettings("m", 60, 20)).limit == 60 * 20
    (tmp_path / ".polyarch.toml").write_text('[arch.arm64]\ntimeout_factor = 3\n')
    assert settings_for(tmp_path, "arm64", JobSettings("m", 5, 10)) == JobSettings("m", 5, 3)
    (tmp_path / ".polyarch.toml").write_text('test_command = 5\n')
    with pytest.raises(ConfigError, match="test_command: expected a string"):
        settings_for(tmp_path, "amd64", default)


@pytest.mark.parametrize("text, culprit", [
    ("timeout = nan\n", "timeout: must be a finite number greater than 0, got nan"),
    ("timeout = inf\n", "timeout: must be a finite number greater than 0, got inf"),
    ("[arch.arm64]\ntimeout_factor = -1\n", "arch.arm64.timeout_factor: must be a finite number"),
    ("timout = 5\n", "timout: unknown key"),
    ("[arch.vax]\ntimeout = 5\n", "arch.vax"),
    ("test_command = '  '\n", "test_command: must not be empty"),
])
def test_a_bad_repo_file_is_refused_naming_file_and_key(tmp_path: Path, text: str, culprit: str) -> None:
    # The same reader as the config's (dispatcher/common/sections.py): the same words.
    (tmp_path / ".polyarch.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        settings_for(tmp_path, "arm64", JobSettings("make check", 600))
    assert str(err.value).startswith(".polyarch.toml: ") and culprit in str(err.value)


def test_a_job_environment_keeps_the_shell_basics_and_named_variables_only() -> None:
    runner_env = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/root", "https_proxy": "http://p:3128",
                  "AWS_SECRET_ACCESS_KEY": "k", "NOTIFY_SOCKET": "@n", "GIT_SSH_COMMAND": "ssh -i key", "CCACHE_DIR": "/c",
                  "POLYARCH_COMMIT": "forged"}
    env = job_environment(runner_env, ("CCACHE_DIR",), {"POLYARCH_COMMIT": "abc"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/root",
                   "https_proxy": "http://p:3128", "CCACHE_DIR": "/c", "POLYARCH_COMMIT": "abc"}
    assert job_environment({}, (), {})["PATH"] == "/usr/local/bin:/usr/bin:/bin"
