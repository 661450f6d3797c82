"""Running a test command: process group, timeout, output cap (real processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dispatcher.errors import ConfigError
from runner.execute import CappedLog, Outcome, Process
from runner.repoconf import JobSettings, settings_for

import pytest


def run(tmp_path: Path, command: str, timeout: float = 10, limit: int = 1 << 20):
    proc = Process(command, tmp_path, dict(os.environ), tmp_path / "out.log", limit)
    return proc.wait(timeout, kill_grace=1), (tmp_path / "out.log").read_bytes()


def test_exit_code_and_output(tmp_path: Path) -> None:
    ex, out = run(tmp_path, "echo out; echo err >&2; exit 7")
    assert ex.outcome == Outcome.EXITED and ex.exit_code == 7
    assert out == b"out\nerr\n"


def test_timeout_kills_background_children_too(tmp_path: Path) -> None:
    started = time.monotonic()
    ex, _ = run(tmp_path, f"sleep 30 & echo $! > {tmp_path}/pid; sleep 30", timeout=0.5)
    assert ex.outcome == Outcome.TIMED_OUT and ex.exit_code is None
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_term_ignoring_command_is_killed_after_the_grace(tmp_path: Path) -> None:
    ex, _ = run(tmp_path, "trap '' TERM; sleep 30", timeout=0.3)
    assert ex.outcome == Outcome.TIMED_OUT


def test_output_cap_keeps_head_and_tail_and_marks_the_cut(tmp_path: Path) -> None:
    ex, out = run(tmp_path, "echo FIRST; head -c 100000 /dev/zero | tr '\\0' x; echo; echo LAST", limit=1000)
    assert ex.truncated
    assert out.startswith(b"FIRST") and out.rstrip().endswith(b"LAST")
    assert b"[polyarch: output truncated:" in out and len(out) < 1100


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
    assert settings_for(tmp_path, "arm64", default) == JobSettings("b", 9)
    (tmp_path / ".polyarch.toml").write_text('[arch.arm64]\ntimeout_factor = 3\n')
    assert settings_for(tmp_path, "arm64", JobSettings("m", 5, 10)) == JobSettings("m", 5, 3)
    (tmp_path / ".polyarch.toml").write_text('test_command = 5\n')
    with pytest.raises(ConfigError, match="test_command: wrong type"):
        settings_for(tmp_path, "amd64", default)
