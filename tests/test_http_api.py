"""The HTTP API over a real socket, served by a real dispatcher process."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import pytest

from conftest import Polyarch, processes_running, wait_for

pytestmark = pytest.mark.daemons


class Api:
    def __init__(self, polyarch: Polyarch) -> None:
        self.base = "http://" + (polyarch.root / "var/dispatcher/http-address").read_text().strip()
        self.secret = (polyarch.root / "var/secret").read_text().strip()

    def call(self, method: str, path: str, body: Optional[bytes] = None,
             token: Optional[str] = "") -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        token = self.secret if token == "" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
                status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers["Content-Type"]
        return status, json.loads(raw) if kind == "application/json" else raw.decode()

    def post(self, data: Any, token: Optional[str] = "") -> tuple[int, Any]:
        return self.call("POST", "/jobs", json.dumps(data).encode(), token)


@pytest.fixture
def api(polyarch: Polyarch) -> Api:
    polyarch.write_config(dispatcher_settings='http_listen = "127.0.0.1:0"')
    polyarch.dispatcher()
    wait_for(lambda: (polyarch.root / "var/dispatcher/http-address").exists(), what="the HTTP API to listen")
    return Api(polyarch)


def test_submit_then_follow_a_job_to_its_result(polyarch: Polyarch, api: Api) -> None:
    sha = polyarch.repo.commit("exit 0")
    assert api.call("GET", "/healthz")[0] == 200
    status, job = api.post({"repo": "demo", "commit": sha, "architectures": ["amd64"]})
    assert status == 201 and job["created"] == 1 and job["status"] == "running"
    assert job["architectures"]["amd64"]["status"] == "queued"
    # The same commit again: the same id, nothing new queued.
    status, again = api.post({"repo": "demo", "commit": sha})
    assert status == 200 and again["id"] == job["id"] and again["created"] == 0
    polyarch.runner("r1")
    wait_for(lambda: api.call("GET", f"/jobs/{job['id']}")[1]["status"] == "passed", what="the job to pass")
    status, by_name = api.call("GET", f"/repos/demo/commits/{sha}")
    assert status == 200 and by_name["architectures"]["amd64"]["status"] == "passed"
    assert by_name["architectures"]["amd64"]["runner"] == "r1" and by_name["id"] == job["id"]

    # /jobs says passed once the result is durable; the metrics count it once its files
    # are written, a moment later.
    wait_for(lambda: "polyarch_commit_to_result_seconds_count 1" in api.call("GET", "/metrics")[1],
             what="the result to be counted in the metrics")
    status, metrics = api.call("GET", "/metrics")
    assert status == 200
    lines = set(metrics.splitlines())
    assert 'polyarch_jobs{status="passed"} 1' in lines and 'polyarch_runners_connected{arch="amd64"} 1' in lines
    assert "polyarch_commit_to_result_seconds_count 1" in lines and "polyarch_lease_expiries_total 0" in lines
    assert '# TYPE polyarch_commit_to_result_seconds histogram' in lines


def test_a_failure_is_failed_overall(polyarch: Polyarch, api: Api) -> None:
    sha = polyarch.repo.commit("exit 1")
    polyarch.runner("r1")
    job = api.post({"repo": "demo", "commit": sha})[1]
    wait_for(lambda: api.call("GET", f"/jobs/{job['id']}")[1]["status"] == "failed", what="the job to fail")


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "body is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"repo": "demo"}', '"repo" and "commit" are required'),
    (b'{"repo": "nope", "commit": "' + b"a" * 40 + b'"}', "unknown repo 'nope'; known: demo"),
    (b'{"repo": "demo", "commit": "xyz"}', "invalid commit 'xyz'"),
    (b'{"repo": "demo", "commit": "' + b"a" * 40 + b'", "architectures": ["m68k"]}', "unknown architecture"),
    (b'{"repo": "demo", "commit": "' + b"a" * 40 + b'", "architectures": ["arm64"]}', "not configured"),
    (b'{"repo": "demo", "commit": "' + b"a" * 40 + b'", "priority": 1}', "unknown field 'priority'"),
])
def test_bad_requests_get_400_with_a_message(api: Api, body: bytes, message: str) -> None:
    status, data = api.call("POST", "/jobs", body)
    assert status == 400 and message in data["error"], data


def test_auth_and_unknown_things(polyarch: Polyarch, api: Api) -> None:
    body = {"repo": "demo", "commit": "a" * 40}
    assert api.post(body, token=None)[0] == 401
    status, data = api.post(body, token="wrong" * 8)
    assert status == 401 and "Bearer" in data["error"]
    assert api.call("GET", "/jobs/999999")[0] == 404
    assert api.call("GET", "/nothing")[0] == 404
    assert api.call("GET", f"/repos/demo/commits/{'b' * 40}")[0] == 404
    assert api.call("GET", f"/repos/nope/commits/{'b' * 40}")[0] == 400
    assert api.call("DELETE", "/jobs/1")[0] == 405
    # Garbage on the socket, and a huge body: refused, and the API keeps serving.
    host, port = api.base[len("http://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"\x00\xff garbage \r\n\r\n")
        assert b'"code": 400' in raw.recv(1000)
    status, _ = api.call("POST", "/jobs", b"x" * 100_000)
    assert status == 413
    assert api.call("GET", "/healthz")[0] == 200
    # Nothing was queued by any of it.
    assert "polyarch_jobs{" not in api.call("GET", "/metrics")[1]


def test_lists_show_repositories_commits_runners_and_unfinished_work(polyarch: Polyarch, api: Api) -> None:
    """What `status` shows, from any host that reaches the API: repositories, their newest
    commits, the runners (connected or not) and the work not finished yet."""
    gate = polyarch.shared / "gate"
    done = polyarch.repo.commit("exit 0")
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([done])
    slow = polyarch.repo.commit(f"touch {gate}.started; while [ ! -e {gate} ]; do sleep 0.05; done")
    wait_for(lambda: (polyarch.shared / "gate.started").exists(), what="the slow job to start")
    queued = polyarch.repo.commit("exit 1")
    wait_for(lambda: len(api.call("GET", "/jobs?state=queued")[1]) == 1, what="the third commit to be queued")
    status, repos = api.call("GET", "/repos")
    assert status == 200 and repos == [{"name": "demo", "branches": ["main"], "architectures": ["amd64"],
                                        "commits": 3}]
    status, running = api.call("GET", "/jobs?state=running")
    assert status == 200 and [(j["commit"], j["state"], j["runner"]) for j in running] == [(slow, "running", "r1")]
    status, waiting = api.call("GET", "/jobs?state=queued")
    assert [(j["commit"], j["state"], j["runner"]) for j in waiting] == [(queued, "queued", None)]
    assert api.call("GET", "/jobs?state=sleeping")[0] == 400
    status, commits = api.call("GET", "/repos/demo/commits?limit=2")
    assert status == 200 and [c["commit"] for c in commits] == [queued, slow]
    assert [c["status"] for c in commits] == ["running", "running"]  # pending commits read "running"
    assert api.call("GET", "/repos/demo/commits?limit=0")[0] == 400
    assert api.call("GET", "/repos/nope/commits")[0] == 400
    status, runners = api.call("GET", "/runners")
    assert status == 200 and [(r["name"], r["arch"], r["connected"]) for r in runners] == [("r1", "amd64", True)]
    gate.touch()
    polyarch.wait_results([slow, queued])
    assert api.call("GET", "/jobs")[1] == []


def test_cancel_stops_a_running_job_within_a_heartbeat_and_a_queued_one_at_once(polyarch: Polyarch) -> None:
    """`cancel` on a running job: its runner learns it at the next heartbeat and kills the
    job's processes (the commit ends `cancelled`, no result from the runner counts); POST
    /jobs/{id}/cancel on a queued one ends it at once; the runner goes on with new work."""
    polyarch.write_config(heartbeat_timeout=3, dispatcher_settings='http_listen = "127.0.0.1:0"')
    started = polyarch.shared / "started"
    polyarch.dispatcher()
    wait_for(lambda: (polyarch.root / "var/dispatcher/http-address").exists(), what="the HTTP API to listen")
    api = Api(polyarch)
    runner = polyarch.runner("r1")
    slow = polyarch.repo.commit(f"touch {started}; sleep 300.4")
    polyarch.observer()
    wait_for(started.exists, what="the slow job to start")
    behind = polyarch.repo.commit("exit 0")
    wait_for(lambda: len(api.call("GET", "/jobs?state=queued")[1]) == 1, what="the next commit to be queued")
    # The queued one first, while the runner is still busy: it ends at once.
    job_id = api.call("GET", f"/repos/demo/commits/{behind}")[1]["id"]
    assert api.call("POST", f"/jobs/{job_id}/cancel", b"{}", token=None)[0] == 401
    status, data = api.call("POST", f"/jobs/{job_id}/cancel", b"{}")
    assert status == 200 and data["cancelled"] == 1 and data["status"] == "failed", data
    assert data["architectures"]["amd64"]["status"] == "cancelled"
    assert data["architectures"]["amd64"]["reason"].startswith("cancelled by HTTP 127.0.0.1")
    assert api.call("POST", "/jobs/999999/cancel", b"{}")[0] == 404
    # Then the running one, by the CLI.
    began = time.monotonic()
    out = polyarch.cli("dispatcher", "cancel", "--config", str(polyarch.config), "--repo", "demo", "--commit", slow)
    assert out.returncode == 0 and out.stdout.strip() == f"demo {slow[:12]}: 1 job(s) cancelled", out.stderr
    result = polyarch.wait_results([slow], timeout=20)[slow]
    assert result["status"] == "cancelled" and result["reason"].startswith("cancelled by cancel ("), result
    # Within the heartbeat interval (1 s) + kill_grace (1 s); 10 s leaves room for a loaded machine.
    wait_for(lambda: not processes_running("sleep", "300.4"), timeout=10, what="the cancelled job to be killed")
    assert time.monotonic() - began < 10
    again = polyarch.cli("dispatcher", "cancel", "--config", str(polyarch.config), "--repo", "demo", "--commit", slow)
    assert again.returncode == 0 and again.stdout.strip() == f"demo {slow[:12]}: nothing unfinished to cancel"
    after = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([after])[after]["status"] == "passed" and runner.alive


def test_a_rerun_is_a_new_attempt_with_the_earlier_result_kept_beside_it(polyarch: Polyarch) -> None:
    """An `error` from a missing tool, fixed on the runner, is run again by hand: the new
    final result replaces <arch>.json once, says it is attempt 2 and who asked, and the
    first result stays beside it as an attempt file."""
    tool = polyarch.shared / "lab-tool"
    sha = polyarch.repo.commit(f"{tool} --check")  # not there yet: exit 127, `error`
    polyarch.write_config(dispatcher_settings='http_listen = "127.0.0.1:0"')
    polyarch.dispatcher()
    wait_for(lambda: (polyarch.root / "var/dispatcher/http-address").exists(), what="the HTTP API to listen")
    api = Api(polyarch)
    polyarch.runner("r1")
    polyarch.observer()
    first = polyarch.wait_results([sha])[sha]
    assert first["status"] == "error" and first["attempt"] == 1 and first["reason"].startswith("command not found")
    tool.write_text("#!/bin/sh\necho the lab tool ran\n")
    tool.chmod(0o755)
    out = polyarch.cli("dispatcher", "rerun", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha,
                       "--failed")
    assert out.returncode == 0 and out.stdout.strip() == f"demo {sha[:12]}: 1 rerun(s) queued", out.stderr
    wait_for(lambda: (polyarch.result(sha) or {}).get("attempt") == 2, what="the rerun's result")
    again = polyarch.result(sha)
    assert again["status"] == "passed" and again["rerun_by"].startswith("rerun ("), again
    [earlier] = again["earlier_attempts"]
    assert earlier["attempt"] == 1 and earlier["status"] == "error" and earlier["log"] == "amd64.attempt1.log"
    folder = polyarch.results / "demo" / sha
    assert "not found" in (folder / "amd64.attempt1.log").read_text()
    assert "the lab tool ran" in (folder / "amd64.log").read_text()
    assert json.loads((folder / "summary.json").read_text())["architectures"] == {"amd64": "passed"}
    # --failed finds nothing to do now; the HTTP API reruns a pass on request.
    none = polyarch.cli("dispatcher", "rerun", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha,
                        "--failed")
    assert none.stdout.strip() == f"demo {sha[:12]}: no final result to rerun (still queued or running?)"
    job_id = api.call("GET", f"/repos/demo/commits/{sha}")[1]["id"]
    status, data = api.call("POST", f"/jobs/{job_id}/rerun", b'{"architectures": ["amd64"]}')
    assert status == 200 and data["rerun"] == 1
    wait_for(lambda: (polyarch.result(sha) or {}).get("attempt") == 3, what="the second rerun's result")
    assert [a["attempt"] for a in polyarch.result(sha)["earlier_attempts"]] == [1, 2]
    assert "not found" in (folder / "amd64.attempt1.log").read_text()  # not overwritten by the later write
    unknown = polyarch.cli("dispatcher", "rerun", "--config", str(polyarch.config), "--repo", "demo",
                           "--commit", "c" * 40)
    assert unknown.returncode == 2 and "is not known to the dispatcher, so there is nothing to rerun" in unknown.stderr
