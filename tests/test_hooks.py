"""Hooks (on_queued, on_result, on_failure, on_commit_done) with a real dispatcher, and the
examples/hooks scripts against a loopback HTTP server that records what they send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
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


class Forge:
    """A loopback HTTP server standing in for GitHub or GitLab: records each request
    (path, headers by lower-case name, JSON body); answers 500 to the first `fail_first` of them, or
    `status` to all."""

    def __init__(self, fail_first: int = 0, status: int = 201) -> None:
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                forge.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                code = 500 if len(forge.requests) <= fail_first else status
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"message": "Bad credentials"}' if code == 401 else b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def states(self) -> list[tuple[str, str]]:
        """(context, state) of each status posted, in order (GitHub's or GitLab's keys)."""
        return [(b.get("context") or b.get("name"), b["state"]) for _, _, b in self.requests]


def test_each_event_runs_its_hook_once_in_order_and_the_github_example_posts_them(polyarch: Polyarch,
                                                                                    tmp_path: Path) -> None:
    events = tmp_path / "events"
    (tmp_path / "token").write_text("s3cret\n")
    forge = Forge()
    github = f"{sys.executable} {ROOT}/examples/hooks/github-status.py --api {forge.url} lab/demo {tmp_path}/token"
    record = (f'echo "$POLYARCH_EVENT|${{POLYARCH_ARCH:-$POLYARCH_ARCHS}}|${{POLYARCH_STATUS:-$POLYARCH_STATUSES}}|'
              f'$POLYARCH_OVERALL|$POLYARCH_PAGE_URL" >> {events}')
    polyarch.write_config(archs=("amd64", "arm64"), dispatcher_settings='public_url = "https://ci.example.org/lab/"',
                          repo_settings=f"""
on_queued = '{record}; {github}'
on_result = '{record}; {github}'
on_commit_done = '{record}; {github}'""")
    polyarch.dispatcher()
    polyarch.runner("r1")  # amd64 only: arm64 waits until it is cancelled
    polyarch.observer()
    try:
        sha = polyarch.repo.commit("exit 0")
        polyarch.wait_results([sha])
        page = f"https://ci.example.org/lab/demo/{sha}/index.html"
        wait_for(lambda: len(events.read_text().splitlines()) >= 2, what="on_queued and on_result")
        assert events.read_text().splitlines() == [f"on_queued|amd64 arm64||pending|{page}",
                                                   f"on_result|amd64|passed|pending|{page}"]
        out = polyarch.cli("dispatcher", "cancel", "--config", str(polyarch.config), "--repo", "demo",
                           "--commit", sha, "--arch", "arm64")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: "on_commit_done" in events.read_text(), what="on_commit_done")
        wait_for(lambda: len(forge.requests) == 6, what="six statuses posted")
        assert events.read_text().splitlines()[2:] == [
            f"on_result|arm64|cancelled|failed|{page}", f"on_commit_done|amd64 arm64|amd64=passed arm64=cancelled|failed|{page}"]
        # GitHub got pending first and the final states after, each linking to the page.
        # The hooks of one commit run in order: GitHub got pending first, the final states after.
        assert forge.states() == [("polyarch/amd64", "pending"), ("polyarch/arm64", "pending"),
                                  ("polyarch", "pending"), ("polyarch/amd64", "success"),
                                  ("polyarch/arm64", "error"), ("polyarch", "failure")]
        path, headers, body = forge.requests[0]
        assert path == f"/repos/lab/demo/statuses/{sha}" and headers["authorization"] == "Bearer s3cret"
        assert body["target_url"] == page
        # A rerun is queued, final, and done again: each event once more.
        out = polyarch.cli("dispatcher", "rerun", "--config", str(polyarch.config), "--repo", "demo",
                           "--commit", sha, "--arch", "amd64")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: events.read_text().count("on_commit_done") == 2, what="the rerun's on_commit_done")
        assert [line.split("|")[:3] for line in events.read_text().splitlines()[4:]] == [
            ["on_queued", "amd64", ""], ["on_result", "amd64", "passed"],
            ["on_commit_done", "amd64 arm64", "amd64=passed arm64=cancelled"]]
    finally:
        forge.close()


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


def _event_env(tmp_path: Path, event: str, **fields: str) -> dict[str, str]:
    return {**os.environ, "POLYARCH_EVENT": event, "POLYARCH_REPO": "demo", "POLYARCH_COMMIT": "c" * 40,
            "POLYARCH_BRANCH": "main", "POLYARCH_PAGE_URL": "https://ci.example.org/demo/" + "c" * 40 + "/index.html",
            "POLYARCH_PAGE": str(tmp_path / "index.html"), **fields}


def test_the_gitlab_example_posts_pending_then_final_and_retries_a_brief_outage(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("glpat-xyz\n")
    forge = Forge(fail_first=1)  # GitLab answers 500 once: the hook tries again
    script = [sys.executable, str(ROOT / "examples/hooks/gitlab-status.py"), "--api", f"{forge.url}/api/v4",
              "lab/demo", str(tmp_path / "token")]
    try:
        for env in (_event_env(tmp_path, "on_queued", POLYARCH_ARCHS="amd64 s390x", POLYARCH_OVERALL="pending"),
                    _event_env(tmp_path, "on_result", POLYARCH_ARCH="s390x", POLYARCH_STATUS="failed",
                               POLYARCH_RUNNER="r2", POLYARCH_OVERALL="pending"),
                    _event_env(tmp_path, "on_commit_done", POLYARCH_ARCHS="amd64 s390x",
                               POLYARCH_STATUSES="amd64=passed s390x=failed", POLYARCH_OVERALL="failed")):
            out = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
    finally:
        forge.close()
    path, headers, body = forge.requests[-1]
    assert path == "/api/v4/projects/lab%2Fdemo/statuses/" + "c" * 40 and headers["private-token"] == "glpat-xyz"
    assert body == {"state": "failed", "name": "polyarch", "description": "amd64=passed s390x=failed",
                    "target_url": "https://ci.example.org/demo/" + "c" * 40 + "/index.html"}
    # The first request was refused with a 500 and sent again.
    assert forge.states() == [("polyarch/amd64", "pending"), ("polyarch/amd64", "pending"),
                              ("polyarch/s390x", "pending"), ("polyarch", "pending"),
                              ("polyarch/s390x", "failed"), ("polyarch", "failed")]


def test_a_forge_that_refuses_the_token_fails_the_hook_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("wrong\n")
    forge = Forge(status=401)
    try:
        out = subprocess.run([sys.executable, str(ROOT / "examples/hooks/github-status.py"), "--api", forge.url,
                              "lab/demo", str(tmp_path / "token")],
                             env=_event_env(tmp_path, "on_result", POLYARCH_ARCH="amd64", POLYARCH_STATUS="passed"),
                             capture_output=True, text=True, timeout=60)
    finally:
        forge.close()
    assert out.returncode != 0 and len(forge.requests) == 1  # a 4xx is not retried
    assert out.stderr.strip() == (f"github-status.py: {forge.url}/repos/lab/demo/statuses/{'c' * 40} answered 401: "
                                  '{"message": "Bad credentials"}')


def test_the_hooks_of_one_commit_run_in_order_and_other_commits_do_not_wait(tmp_path: Path) -> None:
    from dispatcher.hub.hooks import HookRunner
    from dispatcher.hub.store.hook_runs import HookRun

    finished: list[int] = []
    done = threading.Event()

    def record(hook_id: int, code: object) -> None:
        finished.append(hook_id)
        if len(finished) == 4:
            done.set()

    runner = HookRunner(tmp_path, record, workers=4)

    def run(hook_id: int, sha: str, command: str) -> HookRun:
        return HookRun(hook_id, "on_result", command, 10, {"POLYARCH_REPO": "demo", "POLYARCH_COMMIT": sha})
    # Commit a's first hook is slow; its next two wait for it, commit b's does not.
    assert runner.offer([run(1, "a", "sleep 0.5"), run(2, "a", "true"), run(3, "b", "true"),
                         run(4, "a", "true")]) == 4
    assert done.wait(20)
    runner.stop()
    assert finished == [3, 1, 2, 4]
