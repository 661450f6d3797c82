"""Progress of long operations: git's and mmdebstrap's output turned into steps."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from conftest import GitRepo
from dispatcher.common.progress import git_progress, lines, run
from runner.rootfs import STEPS, mmdebstrap_phase


def test_lines_split_on_carriage_returns_as_git_redraws_them() -> None:
    data = b"Receiving objects:  10% (1/10)\rReceiving objects: 100% (10/10), done.\nI: success\n"
    assert list(lines(io.BufferedReader(io.BytesIO(data)))) == [
        "Receiving objects:  10% (1/10)", "Receiving objects: 100% (10/10), done.", "I: success"]


def test_mmdebstrap_phases_in_order() -> None:
    assert mmdebstrap_phase("I: downloading packages with apt...") == ("downloading packages", 2, len(STEPS))
    assert mmdebstrap_phase("I: success in 276.45 seconds") == ("success", 7, len(STEPS))
    assert mmdebstrap_phase("Get:1 http://deb.debian.org bookworm InRelease") is None


def test_a_real_git_fetch_reports_its_progress(tmp_path: Path) -> None:
    source = GitRepo(tmp_path / "source")
    for i in range(30):
        source.commit(f"exit {i % 2}", files={f"f{i}.txt": "x" * 1000 * i})
    seen: list[tuple[str, int, int]] = []
    code, tail = run(["git", "clone", "--bare", "--progress", "--no-local", str(source.path), str(tmp_path / "m")],
                     git_progress, lambda *step: seen.append(step), timeout=60)
    assert code == 0, tail
    received = [s for s in seen if s[0] == "Receiving objects"]
    assert received and received[-1][1] == received[-1][2] > 60  # ends at total: 30 commits, trees, blobs
    assert subprocess.run(["git", "-C", str(tmp_path / "m"), "rev-parse", "main"], capture_output=True).returncode == 0


def test_a_failed_mmdebstrap_is_told_by_its_error_line_not_its_teardown() -> None:
    from runner.rootfs import mmdebstrap_cause

    seen = ["I: running apt-get update...",
            "W: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/InRelease  File has "
            "unexpected size (1024 != 2048). Mirror sync in progress?",
            "E: apt-get update -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed",
            "E: mmdebstrap failed to run", "I: removing tempdir /tmp/x...",
            "mmdebstrap: main process received signal PIPE", "tee: received signal PIPE", "sh: received signal PIPE"]
    cause = mmdebstrap_cause(seen)
    assert cause.startswith("E: apt-get update") and "File has unexpected size" in cause
    assert "PIPE" not in cause
    assert mmdebstrap_cause(["a", "b", "c", "d"]) == "b | c | d"


def test_lines_picked_by_keep_survive_a_long_tail(tmp_path) -> None:
    from dispatcher.common.progress import run

    script = "echo 'E: the cause'; i=0; while [ $i -lt 50 ]; do echo noise $i; i=$((i+1)); done; exit 3"
    code, out = run(["sh", "-c", script], lambda line: None, lambda *a: None, keep=lambda line: line.startswith("E: "))
    assert code == 3 and out[0] == "E: the cause" and out[-1] == "noise 49" and len(out) == 21
