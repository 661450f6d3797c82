"""Git faults on the observer: each repository's trouble stays its own, the rest are served."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch, wait_for
from faults.conftest import record, state_value

pytestmark = pytest.mark.daemons

BIG = 10_000
FETCH_TIMEOUT = 6


class SilentGitServer:
    """Accepts git:// connections on loopback and never answers: a remote that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _fast_import(repo: GitRepo, n: int) -> str:
    """Append n commits to main in one fast-import (seconds, not minutes); returns the head."""
    head = repo.git("rev-parse", "HEAD")
    chunks = []
    for i in range(1, n + 1):
        parent = f"from {head}\n" if i == 1 else ""
        msg = f"bulk {i}\n".encode()
        content = f"{i}\n".encode()
        chunks.append(b"commit refs/heads/main\nmark :%d\ncommitter Dev <dev@example.invalid> %d +0000\n"
                      b"data %d\n%s%sM 644 inline counter\ndata %d\n%s\n"
                      % (i, 1_700_000_000 + i, len(msg), msg, parent.encode(), len(content), content))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo.path, input=b"".join(chunks), check=True)
    repo.git("reset", "-q", "--hard", "main")
    return repo.git("rev-parse", "HEAD")


def _subject(polyarch: Polyarch, sha: str) -> str:
    return str(state_value(polyarch.root, "SELECT subject FROM commits WHERE sha = ?", sha))


def _jobs(polyarch: Polyarch, repo: str) -> int:
    return int(state_value(polyarch.root, "SELECT count(*) FROM jobs WHERE repo = ?", repo))


def test_git_faults_are_logged_backed_off_and_the_other_repos_served(polyarch: Polyarch, tmp_path: Path) -> None:
    silent = SilentGitServer()
    big = GitRepo(tmp_path / "big")
    big.commit("exit 0")
    polyarch.write_config(extra_repos=f"""
[[repos]]
name = "gone"
url = "{tmp_path / 'no-such-repository'}"
test_command = "true"

[[repos]]
name = "hangs"
url = "git://127.0.0.1:{silent.port}/repo.git"
test_command = "true"

[[repos]]
name = "big"
url = "{big.path}"
test_command = "true"
""")
    text = polyarch.config.read_text().replace("watch = true", f"watch = true\nfetch_timeout = {FETCH_TIMEOUT}", 1)
    polyarch.config.write_text(text)
    first = polyarch.repo.commit("exit 0")
    try:
        polyarch.dispatcher()
        polyarch.runner("r1")
        observer = polyarch.observer()
        started = time.monotonic()
        # While "hangs" is stuck in its first fetch, demo is served.
        polyarch.wait_results([first], timeout=FETCH_TIMEOUT - 1)
        assert time.monotonic() - started < FETCH_TIMEOUT
        assert f"no answer within {FETCH_TIMEOUT:g} s" not in observer.log()

        # A commit with a 1 MB one-line message and 5 MB of binary files.
        (polyarch.repo.path / "blob.bin").write_bytes(bytes(range(256)) * 20_000)
        huge = polyarch.repo.commit("exit 0", message="x" * 1_000_000)
        assert polyarch.wait_results([huge])[huge]["status"] == "passed"
        assert len(_subject(polyarch, huge)) == 200

        # Force-push: the new head is tested, the old one stays as it was.
        polyarch.repo.git("reset", "-q", "--hard", "HEAD~1")
        rewritten = polyarch.repo.commit("exit 0", message="rewritten history")
        assert polyarch.wait_results([rewritten])[rewritten]["status"] == "passed"
        wait_for(lambda: "was force-pushed" in observer.log(), what="the force-push to be logged")

        # 10,000 new commits at once: the newest max_backfill (100) are queued, the rest logged.
        big_head = _fast_import(big, BIG)
        big_result = polyarch.results / "big" / big_head / "amd64.json"
        wait_for(big_result.exists, timeout=60, what="the newest of the 10,000 commits to be tested")
        wait_for(lambda: f"{BIG} new commits, more than max_backfill = 100" in observer.log(),
                 what="the backfill cap to be logged")
        assert _jobs(polyarch, "big") == 101  # its first head, then the newest 100

        # The unreachable and the hanging repositories are logged and backed off.
        wait_for(lambda: f"no answer within {FETCH_TIMEOUT:g} s" in observer.log(), timeout=FETCH_TIMEOUT * 3,
                 what="the hanging fetch to time out")
        log = observer.log()
        assert "gone: " in log and "retry in" in log
        assert _jobs(polyarch, "gone") == 0 and _jobs(polyarch, "hangs") == 0

        # Still serving demo after all that.
        after = polyarch.repo.commit("exit 0")
        assert polyarch.wait_results([after])[after]["status"] == "passed"
        assert observer.alive
    finally:
        silent.close()
    record("fault", "git: unreachable, hanging (fetch_timeout), force-push, 10,000-commit push, "
           "1 MB message + 5 MB binary", trials=1, commits=5, results=5, lost=0, duplicated=0)


def test_a_deleted_branch_pushed_again_has_every_new_commit_tested(polyarch: Polyarch) -> None:
    polyarch.write_config()
    text = polyarch.config.read_text().replace('test_command = "sh test.sh"',
                                              'test_command = "sh test.sh"\nbranches = ["main", "feature"]')
    polyarch.config.write_text(text)
    polyarch.repo.commit("exit 0")
    polyarch.repo.git("checkout", "-q", "-b", "feature")
    feature = polyarch.repo.commit("exit 0")
    polyarch.repo.git("checkout", "-q", "main")
    polyarch.dispatcher()
    polyarch.runner("r1")
    observer = polyarch.observer()
    polyarch.wait_results([feature])
    polyarch.repo.git("branch", "-D", "feature")
    wait_for(lambda: "branch feature was deleted" in observer.log(), what="the deleted branch to be logged")
    after = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([after])[after]["status"] == "passed"
    # Pushed again four commits ahead, in one push (made on an unwatched branch first):
    # all four are tested, not only the new head.
    polyarch.repo.git("checkout", "-q", "-b", "unwatched", feature)
    again = [polyarch.repo.commit("exit 0") for _ in range(4)]
    polyarch.repo.git("checkout", "-q", "main")
    polyarch.repo.git("branch", "feature", "unwatched")
    assert all(r["status"] == "passed" for r in polyarch.wait_results(again).values())
    assert observer.alive
    record("fault", "a branch deleted, then pushed again 4 commits ahead", trials=1, commits=4, results=4, lost=0,
           duplicated=0)


def test_a_runner_abandons_a_hanging_fetch_at_fetch_timeout_and_at_its_stop(polyarch: Polyarch) -> None:
    # A job of a repository whose remote accepts and never answers: the runner's fetch ends
    # at [runner] fetch_timeout (not 600 s x 3 tries), and a SIGTERM stops one under way.
    silent = SilentGitServer()
    try:
        polyarch.write_config(extra_repos=f"""
[[repos]]
name = "hangs"
url = "git://127.0.0.1:{silent.port}/x"
architectures = ["amd64"]
test_command = "true"
""")
        polyarch.config.write_text(polyarch.config.read_text().replace("stop_grace = 20", "stop_grace = 20\nfetch_timeout = 3"))
        polyarch.dispatcher()
        runner = polyarch.runner("r1")
        sha = "c" * 40
        cfg = ("--config", str(polyarch.config))
        assert polyarch.cli("dispatcher", "submit", *cfg, "--repo", "hangs", "--commit", sha).returncode == 0
        result = polyarch.results / "hangs" / sha / "amd64.json"
        wait_for(result.exists, timeout=30, what="the hanging fetch to end the job")
        data = json.loads(result.read_text())
        assert data["status"] == "error" and "no answer within 3 s (fetch_timeout)" in data["reason"], data
        # Again, and stop the runner while its fetch hangs: it stops at once (twice asked).
        other = "d" * 40
        assert polyarch.cli("dispatcher", "submit", *cfg, "--repo", "hangs", "--commit", other).returncode == 0
        wait_for(lambda: runner.log().count("running hangs") >= 2 or len(silent.held) >= 2, timeout=20,
                 what="the second fetch to start")
        runner.signal(signal.SIGTERM)
        runner.signal(signal.SIGTERM)
        assert runner.stop(timeout=10) == 0
    finally:
        silent.close()
    record("fault", "a runner's fetch from a remote that hangs (fetch_timeout, SIGTERM)", jobs=2)
