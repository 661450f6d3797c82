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
