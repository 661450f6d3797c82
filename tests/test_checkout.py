"""The runner's mirrors and worktrees: real repositories, a real git daemon on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from runner.checkout import CheckoutError, Mirrors
from tests.conftest import GitRepo, wait_for


def _status(worktree: Path) -> str:
    """Everything git sees that differs from the commit, ignored files included."""
    return subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=worktree, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def mirrors(tmp_path: Path) -> Mirrors:
    return Mirrors(tmp_path / "mirrors", tmp_path / "checkouts")


@pytest.fixture
def served(tmp_path: Path, repo: GitRepo) -> Iterator[str]:
    """The test repository behind `git daemon` on a loopback port: a URL that must be fetched."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1",
                               f"--port={port}", f"--base-path={tmp_path}", str(tmp_path)],
                              stderr=subprocess.DEVNULL, start_new_session=True)

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_for(listening, timeout=10, what="git daemon to listen")
        yield f"git://127.0.0.1:{port}/{repo.path.name}"
    finally:
        # `git daemon` runs git-daemon as a child: kill the group, not just the wrapper.
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def test_a_local_repository_is_borrowed_with_its_branches_and_tags(mirrors: Mirrors, repo: GitRepo) -> None:
    first = repo.commit()
    repo.git("tag", "-a", "v1.0", "-m", "release")
    repo.git("branch", "old")
    second = repo.commit()
    dest = mirrors.checkout("r", str(repo.path), second)
    mirror = mirrors.root / "r.git"
    assert (mirror / "objects/info/alternates").read_text().strip() == str(repo.path / ".git" / "objects")
    assert not list((mirror / "objects/pack").glob("*.pack")), "nothing is copied from a local repository"
    # What a fetch gave tests before: tags for `git describe`, the branches.
    described = subprocess.run(["git", "describe", "--tags"], cwd=dest, capture_output=True, text=True)
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith("v1.0-1-g")
    assert subprocess.run(["git", "rev-parse", "old"], cwd=dest, capture_output=True, text=True,
                          check=True).stdout.strip() == first
    # A branch deleted at the source goes from the mirror too, as a fetch --prune did.
    repo.git("branch", "-D", "old")
    third = repo.commit()
    mirrors.clean("r")
    mirrors.checkout("r", str(repo.path), third)
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "old"], cwd=dest,
                          capture_output=True).returncode != 0


def test_the_worktree_is_reused_and_every_job_starts_from_exactly_its_commit(mirrors: Mirrors,
                                                                              repo: GitRepo) -> None:
    (repo.path / ".gitignore").write_text("build/\n")
    first = repo.commit(files={"keep.txt": "one"})
    second = repo.commit(files={"keep.txt": "two"})
    dest = mirrors.checkout("r", str(repo.path), first)
    # What a test leaves behind: an edited tracked file, an untracked file, ignored output,
    # a nested repository.
    (dest / "keep.txt").write_text("edited by the test")
    (dest / "stray.txt").write_text("x")
    (dest / "build").mkdir()
    (dest / "build" / "out.o").write_text("x")
    subprocess.run(["git", "init", "-q", str(dest / "nested")], check=True)
    mirrors.clean("r")
    again = mirrors.checkout("r", str(repo.path), second)
    assert again == dest
    assert _status(dest) == ""
    assert (dest / "keep.txt").read_text() == "two"
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True,
                          check=True).stdout.strip() == second


def test_a_worktree_the_test_broke_is_made_afresh(mirrors: Mirrors, repo: GitRepo) -> None:
    first, second = repo.commit(), repo.commit()
    dest = mirrors.checkout("r", str(repo.path), first)
    (dest / ".git").unlink()  # a test that deleted the worktree's link to the mirror
    (dest / "stray.txt").write_text("x")
    mirrors.clean("r")
    assert mirrors.checkout("r", str(repo.path), second) == dest
    assert _status(dest) == ""
    assert not (dest / "stray.txt").exists()


def test_a_remote_url_is_fetched_into_the_mirror(mirrors: Mirrors, repo: GitRepo, served: str) -> None:
    first = repo.commit()
    dest = mirrors.checkout("r", served, first)
    mirror = mirrors.root / "r.git"
    assert not (mirror / "objects/info/alternates").exists()
    assert subprocess.run(["git", "cat-file", "-e", f"{first}^{{commit}}"], cwd=mirror).returncode == 0
    second = repo.commit()
    mirrors.clean("r")
    mirrors.checkout("r", served, second)
    assert (dest / "counter").read_text() == "2"


def test_a_commit_that_is_nowhere_is_an_error_naming_it(mirrors: Mirrors, repo: GitRepo, served: str) -> None:
    repo.commit()
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(CheckoutError, match=missing):
        mirrors.checkout("r", served, missing)
    with pytest.raises(CheckoutError, match=missing):
        mirrors.checkout("r", str(repo.path), missing)


def test_refs_are_written_as_git_writes_them_or_left_to_git(tmp_path: Path, repo: GitRepo) -> None:
    from dispatcher.common.git import write_loose_refs

    first = repo.commit("exit 0")
    second = repo.commit("exit 1")
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(mirror)], check=True)
    subprocess.run(["git", "--git-dir", str(mirror), "pack-refs", "--all"], check=True)
    # A loose ref outranks the packed one; a new one under a new folder is made.
    assert write_loose_refs(mirror, {"refs/heads/main": first, "refs/heads/fix#12/arm": second})

    def rev(ref: str) -> str:
        return subprocess.run(["git", "--git-dir", str(mirror), "rev-parse", ref], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert rev("refs/heads/main") == first and rev("refs/heads/fix#12/arm") == second
    # A name that is not plainly safe, or a ref whose lock is held, is git's to handle.
    assert not write_loose_refs(mirror, {"refs/heads/../../escape": first})
    assert not (tmp_path / "escape").exists()
    (mirror / "refs/heads/main.lock").write_text("")
    assert not write_loose_refs(mirror, {"refs/heads/main": second}) and rev("refs/heads/main") == first
