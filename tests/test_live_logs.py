"""Live logs through real daemons: a running job's output, read while it runs.

The jobs here wait for a file this side makes before printing their next line, so each
test proves that a line is readable while the job that printed it is still running,
without betting on timings (bench/live_log.py measures the delay).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, Polyarch, wait_for

pytestmark = pytest.mark.daemons

# Python's print, not flushed: a pipe would hold every line until the job ends; the job's
# terminal (runner.job_tty) makes each line reach the log when printed.
STEPS = """python3 -c '
import os, sys, time
for i in range(1, 4):
    print("line", i)
    while not os.path.exists("{shared}/go-%d" % i):
        time.sleep(0.05)
print("done")
'
"""


class Follower:
    """`polyarch-dispatcher logs --follow` in a process of its own; what it printed so far."""

    def __init__(self, polyarch: Polyarch, sha: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "logs", "--config", str(polyarch.config), "--repo", "demo",
             "--commit", sha, *args], cwd=polyarch.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.out = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self.out += chunk

    def text(self) -> str:
        return self.out.decode()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        err = self.proc.stderr.read().decode()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, self.text(), err


def _go(polyarch: Polyarch, step: int) -> None:
    (polyarch.shared / f"go-{step}").touch()


def test_a_running_jobs_lines_are_followed_as_printed_then_its_status(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit(STEPS.format(shared=polyarch.shared))
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.cli("dispatcher", "submit", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    follower = Follower(polyarch, sha, "--follow")
    part = polyarch.results / "demo" / sha / "amd64.log.part"
    for step in (1, 2, 3):
        # Printed, not yet allowed to go on: the job is running, and the line is already here.
        wait_for(lambda step=step: f"line {step}\n" in follower.text(), what=f"line {step} in the follower's output "
                                                                   f"(have {follower.text()!r})")
        assert f"line {step}\n" in part.read_text()  # the file readers' live log grows too
        assert polyarch.result(sha) is None
        _go(polyarch, step)
    code, out, err = follower.finish()
    assert code == 0, out + err
    # Every line once, in order, then the final status line.
    assert out.splitlines()[:4] == ["line 1", "line 2", "line 3", "done"], out
    assert out.rstrip().splitlines()[-1].startswith(f"[polyarch: demo {sha[:12]} amd64 passed (attempt 1"), out
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "passed"
    assert not part.exists()  # gone with the final log
    assert "line 3\ndone\n" in (polyarch.results / "demo" / sha / "amd64.log").read_text()
    # Read again once final: the final log, and its status on stderr; stdout is the log alone.
    again = polyarch.cli("dispatcher", "logs", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    assert again.returncode == 0 and again.stdout == (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert "amd64 passed" in again.stderr


def test_a_follower_over_http_streams_the_output_and_ends_with_the_status(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit(STEPS.format(shared=polyarch.shared) + "exit 3\n")
    polyarch.write_config(dispatcher_settings='http_listen = "127.0.0.1:0"')
    polyarch.dispatcher()
    base = "http://" + (polyarch.root / "var/dispatcher/http-address").read_text().strip()
    secret = (polyarch.root / "var/secret").read_text().strip()
    post = urllib.request.Request(base + "/jobs", data=json.dumps({"repo": "demo", "commit": sha}).encode(),
                                  headers={"Authorization": f"Bearer {secret}"}, method="POST")
    with urllib.request.urlopen(post, timeout=10) as response:  # noqa: S310 - loopback only
        job_id = json.load(response)["id"]
    polyarch.runner("r1")
    got = b""
    with urllib.request.urlopen(f"{base}/jobs/{job_id}/log?follow=1", timeout=30) as stream:  # noqa: S310
        assert stream.headers["Transfer-Encoding"] == "chunked"
        for step in (1, 2, 3):
            while f"line {step}\n".encode() not in got:
                got += stream.read1(4096)
            _go(polyarch, step)
        got += stream.read()
    text = got.decode()
    assert text.splitlines()[:4] == ["line 1", "line 2", "line 3", "done"], text
    assert text.rstrip().splitlines()[-1].startswith(f"[polyarch: demo {sha[:12]} amd64 failed"), text
    assert "test command exited with 3" in text.splitlines()[-1]
    # Not followed, once published (the follower's stream ends at the recorded result;
    # its files follow, later on a busy machine): the final log, whole, its state in a header.
    polyarch.wait_results([sha])
    with urllib.request.urlopen(f"{base}/jobs/{job_id}/log", timeout=10) as response:  # noqa: S310
        assert response.headers["X-Polyarch-State"] == "failed"
        assert response.read().decode() == (polyarch.results / "demo" / sha / "amd64.log").read_text()


def test_a_flood_of_output_keeps_the_live_log_bounded_and_the_final_one_whole(polyarch: Polyarch) -> None:
    # 12 MB at full speed: far past what heartbeats carry and past live_log_limit.
    sha = polyarch.repo.commit("head -c 12000000 /dev/zero | tr '\\0' 'x'; echo; echo the end")
    polyarch.write_config(dispatcher_settings="live_log_limit = 100000", runner_settings="log_limit = 200000")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.cli("dispatcher", "submit", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    result = polyarch.wait_results([sha])[sha]
    assert result["status"] == "passed" and result["log_truncated"] is True
    log = (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert log.endswith("the end\n") and len(log) < 200000 + 200
    assert not (polyarch.results / "demo" / sha / "amd64.log.part").exists()


def test_logs_of_a_queued_job_says_so_and_of_an_unknown_one_exits_2(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.cli("dispatcher", "submit", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    queued = polyarch.cli("dispatcher", "logs", "--config", str(polyarch.config), "--repo", "demo",
                          "--commit", sha)
    assert queued.returncode == 0 and queued.stdout == ""
    assert "is queued: no output yet" in queued.stderr
    unknown = polyarch.cli("dispatcher", "logs", "--config", str(polyarch.config), "--repo", "demo",
                           "--commit", "0" * 40)
    assert unknown.returncode == 2 and "no job of demo 000000000000 on amd64" in unknown.stderr
    wrong_arch = polyarch.cli("dispatcher", "logs", "--config", str(polyarch.config), "--repo", "demo",
                              "--commit", sha, "--arch", "sparc")
    assert wrong_arch.returncode == 2, wrong_arch.stderr


def test_a_job_may_reopen_its_own_output_as_the_job_user(polyarch: Polyarch, tmp_path: Path) -> None:
    # tee /dev/stderr reopens the job's terminal by name: it belongs to the job user.
    sha = polyarch.repo.commit("echo via-tee | tee /dev/stderr; test -t 1 && echo on-a-terminal; echo $TERM")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.cli("dispatcher", "submit", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    result = polyarch.wait_results([sha])[sha]
    log = (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert result["status"] == "passed", log
    assert log.count("via-tee\n") == 2 and "on-a-terminal\ndumb\n" in log
    assert "\r" not in log  # the terminal adds no carriage returns
