"""on_result / on_failure hooks with a real dispatcher, and the examples/hooks scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, Polyarch, wait_for

pytestmark = pytest.mark.daemons


def test_hooks_get_the_result_and_a_hanging_or_failing_hook_blocks_nothing(polyarch: Polyarch,
                                                                            tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    polyarch.write_config(repo_settings=f"""
on_result = "env | grep ^POLYARCH_ | sort > {seen}-$POLYARCH_COMMIT; exit 7"
on_failure = "sleep 60"
hook_timeout = 1""")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    first = polyarch.repo.commit("exit 1")
    polyarch.wait_results([first])
    env_file = Path(f"{seen}-{first}")
    wait_for(env_file.exists, what="the on_result hook to run")
    wait_for(lambda: "POLYARCH_STATUS" in env_file.read_text(), what="the hook's environment")
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["POLYARCH_STATUS"] == "failed" and env["POLYARCH_ARCH"] == "amd64" and env["POLYARCH_REPO"] == "demo"
    assert env["POLYARCH_OVERALL"] == "failed" and env["POLYARCH_RUNNER"] == "r1"
    assert json.loads(Path(env["POLYARCH_RESULT_FILE"]).read_text())["commit"] == first
    # The hanging on_failure hook is killed at hook_timeout; the failing one is logged.
    wait_for(lambda: "killed after hook_timeout = 1 s" in dispatcher.log(), what="the hanging hook to be killed")
    assert f"on_result hook for demo {first[:12]} amd64 (id 1) exited with 7" in dispatcher.log()
    # Meanwhile the dispatcher kept working: the next commit's result is there too.
    second = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([second])[second]["status"] == "passed"
    wait_for(lambda: Path(f"{seen}-{second}").exists(), what="the hook for the second commit")
    assert dispatcher.alive


def _result_env(tmp_path: Path, status: str = "failed") -> dict[str, str]:
    result = tmp_path / "amd64.json"
    result.write_text(json.dumps({"status": status, "failed_tests": ["calc::test_sub"]}))
    log = tmp_path / "amd64.log"
    log.write_text("line 1\nAssertionError: 3 != 2\n")
    return {**os.environ, "POLYARCH_REPO": "demo", "POLYARCH_COMMIT": "c" * 40, "POLYARCH_BRANCH": "main",
            "POLYARCH_ARCH": "amd64", "POLYARCH_STATUS": status, "POLYARCH_OVERALL": "failed",
            "POLYARCH_RUNNER": "r1", "POLYARCH_RESULT_FILE": str(result), "POLYARCH_LOG_FILE": str(log),
            "POLYARCH_SUMMARY_FILE": str(tmp_path / "summary.json"), "POLYARCH_PAGE": str(tmp_path / "index.html")}


def test_the_webhook_example_posts_the_result(tmp_path: Path) -> None:
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    out = subprocess.run([sys.executable, str(ROOT / "examples/hooks/webhook.py"), url], env=_result_env(tmp_path),
                         capture_output=True, text=True, timeout=30)
    server.server_close()
    assert out.returncode == 0, out.stderr
    [body] = received
    assert "demo cccccccccccc failed on amd64" in body["text"] and "calc::test_sub" in body["text"]
    assert body["result"]["status"] == "failed"


def test_the_mail_example_hands_a_message_to_sendmail(tmp_path: Path) -> None:
    # sendmail is the MTA's, not ours: a stand-in on PATH records what it was given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sendmail").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/mail\n")
    (bin_dir / "sendmail").chmod(0o755)
    env = _result_env(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    out = subprocess.run(["sh", str(ROOT / "examples/hooks/mail-on-failure.sh"), "lab@example.org"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    mail = (tmp_path / "mail").read_text()
    assert (tmp_path / "args").read_text().strip() == "-t"
    assert "To: lab@example.org" in mail and "Subject: [polyarch] demo cccccccccccc failed on amd64" in mail
    assert "AssertionError: 3 != 2" in mail
