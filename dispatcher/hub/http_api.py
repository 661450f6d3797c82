"""The dispatcher's HTTP API (stdlib http.server): off unless [dispatcher] http_listen is set.

    POST /jobs                         {"repo", "commit", "architectures"?, "branch"?} -> {"id", ...}
    POST /jobs/{id}/cancel             {"architectures"?} -> {"cancelled": N, ...}: stop its unfinished jobs
    POST /jobs/{id}/rerun              {"architectures"?, "failed"?} -> {"rerun": N, ...}: run its results again
    GET  /jobs/{id}                    per-arch status and overall passed / failed / running
    GET  /jobs/{id}/log?arch=A         its log on A: the final one, or a running job's output so far;
                                       &follow=1 streams it until the job ends, then the status line
    GET  /repos/{repo}/commits/{sha}   the same, by name
    GET  /repos                        the configured repositories: branches, architectures, commits seen
    GET  /repos/{repo}/commits         its newest commits (?limit=N, at most 100), each as above
    GET  /runners                      every runner seen: arch, host, machine, qemu, root, connected
    GET  /jobs?state=queued|running    the work not finished yet, running first
    GET  /healthz                      200 while the state database answers
    GET  /metrics                      Prometheus text format

A job id names one commit's run on its architectures (the commit's number in the state
database): posting the same commit again returns the same id. POST needs the shared
secret as a bearer token; GETs show what test_results/ shows anyway. Every error is JSON
{"error": "..."} with 400 (bad JSON, bad or unknown names), 401, 404, 405 or 413.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from dispatcher import __version__
from dispatcher.common.config import Config
from dispatcher.common.errors import PolyarchError, StateError
from dispatcher.hub.service import Hub
from dispatcher.hub.store.rows import JobState
from dispatcher.views.logs import read as read_log, status_line
from dispatcher.wire.protocol import LogRead, LogText
from dispatcher.wire.errors import code_for, http_status

log = logging.getLogger("polyarch.http")

MAX_BODY = 64 * 1024
_JOB = re.compile(r"^/jobs/(\d{1,18})$")
_COMMIT = re.compile(r"^/repos/([^/]+)/commits/([^/]+)$")
_COMMITS = re.compile(r"^/repos/([^/]+)/commits$")
_ACTION = re.compile(r"^/jobs/(\d{1,18})/(cancel|rerun)$")
_LOG = re.compile(r"^/jobs/(\d{1,18})/log$")
MAX_LIST = 100


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: Config, hub: Hub, secret: bytes) -> None:
        self.hub = hub
        self.secret = secret
        addr = config.dispatcher.http_listen
        assert addr is not None  # noqa: S101 - only made when configured
        import socket

        self.address_family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        super().__init__((addr.host, addr.port), _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="http",
                                  daemon=True)
        thread.start()
        return thread


def overall(status: str) -> str:
    """The API's overall word: a commit still pending is `running`."""
    return "running" if status == "pending" else status


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = f"polyarch-dispatcher/{__version__}"
    protocol_version = "HTTP/1.1"
    # A client that opens a connection and sends nothing holds a thread: not for long.
    timeout = 30
    # Requests too malformed to reach a route (garbage, a bad request line) are answered
    # by http.server itself: in JSON too.
    error_message_format = '{"error": "%(message)s: %(explain)s", "code": %(code)d}\n'
    error_content_type = "application/json"

    def log_message(self, format: str, *args: Any) -> None:  # the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing ------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, data: Any) -> None:
        self._send(status, (json.dumps(data, indent=2) + "\n").encode(), "application/json")

    def _handle(self, route) -> None:
        try:
            route()
        except ApiError as exc:
            if self.command == "POST":
                self.close_connection = True  # its body may be unread: do not parse it as a request
            if exc.status >= 500 or exc.status == HTTPStatus.UNAUTHORIZED:
                log.warning("HTTP %s %s from %s: %s", self.command, self.path[:200], self.client_address[0], exc)
            self._json(exc.status, {"error": str(exc)})
        except StateError as exc:
            log.error("HTTP %s %s: %s", self.command, self.path[:200], exc)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"dispatcher cannot answer now: {exc}"})
        except PolyarchError as exc:  # a refusal of the hub's rules: the one table gives its status
            self._json(http_status(code_for(exc)), {"error": str(exc)})
        except Exception:  # one broken request must not end the API thread's work
            log.exception("HTTP %s %s failed", self.command, self.path[:200])
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the dispatcher's log"})

    def do_GET(self) -> None:  # http.server's naming
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_PUT(self) -> None:
        self._handle(self._not_allowed)

    do_DELETE = do_PATCH = do_PUT

    def _not_allowed(self) -> None:
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here")

    # --- routes --------------------------------------------------------------------------

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        hub = self.server.hub
        if path == "/healthz":
            self._json(HTTPStatus.OK, {"ok": True, "version": __version__, **hub.health()})
        elif path == "/metrics":
            self._send(HTTPStatus.OK, hub.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif m := _JOB.match(path):
            found = hub.store.queries.commit_by_id(int(m.group(1)))
            if found is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no job {m.group(1)}")
            self._json(HTTPStatus.OK, self._commit(*found))
        elif m := _LOG.match(path):
            self._log(int(m.group(1)))
        elif m := _COMMIT.match(path):
            repo, sha = m.group(1), m.group(2)
            data = self._commit(repo, sha)
            if data is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"commit {sha} of {repo} is not known")
            self._json(HTTPStatus.OK, data)
        elif path == "/repos":
            self._json(HTTPStatus.OK, [{"name": r.name, "branches": list(r.branches),
                                        "architectures": [a.value for a in r.architectures],
                                        "commits": hub.store.queries.commit_count(r.name)}
                                       for r in hub.config.repos])
        elif m := _COMMITS.match(path):
            repo = hub.repo(m.group(1)).name
            shas = list(dict.fromkeys(j.sha for j in hub.store.queries.jobs(repo, None, self._limit())))
            self._json(HTTPStatus.OK, [self._commit(repo, sha) for sha in shas])
        elif path == "/runners":
            connected = hub.presence.connected()
            self._json(HTTPStatus.OK, [{"name": r.name, "arch": r.arch, "host": r.host, "machine": r.machine,
                                        "emulated": r.emulated, "qemu": r.qemu, "root": r.root,
                                        "version": r.version, "last_seen": r.last_seen,
                                        "connected": r.name in connected}
                                       for r in hub.store.queries.runners()])
        elif path == "/jobs":
            wanted = self._query().get("state", "queued,running").split(",")
            if not set(wanted) <= {"queued", "running"}:
                raise ApiError(HTTPStatus.BAD_REQUEST, "state is queued, running or both (queued,running)")
            states = {"queued": JobState.QUEUED, "running": JobState.LEASED}
            chosen = {states[w] for w in wanted}
            self._json(HTTPStatus.OK, [{"repo": j.repo, "commit": j.sha, "arch": j.arch,
                                        "state": "running" if j.state == JobState.LEASED else "queued",
                                        "runner": j.runner if j.state == JobState.LEASED else None,
                                        "attempt": j.attempt, "id": hub.store.queries.commit_id(j.repo, j.sha)}
                                       for j in hub.store.queries.active_jobs(limit=1000) if j.state in chosen])
        else:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {path[:100]!r}")

    def _log(self, job_id: int) -> None:
        """A job's log as text/plain; followed, in chunks as the output arrives."""
        hub = self.server.hub
        found = hub.store.queries.commit_by_id(job_id)
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no job {job_id}")
        repo, sha = found
        query = self._query()
        archs = [a.arch for a in hub.query(repo, sha).archs]
        arch = query.get("arch") or (archs[0] if len(archs) == 1 else "")
        if not arch:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"job {job_id} runs on {', '.join(archs)}: say which with ?arch=")
        follow = query.get("follow", "0") in ("1", "true", "yes")

        def fetch(request: LogRead) -> LogText:
            return hub.read_log(request.repo, request.commit, request.arch, request.offset, request.wait,
                                request.source, request.attempt)

        if not follow:
            parts: list[str] = []
            last = read_log(fetch, repo, sha, arch, parts.append, follow=False)
            self.send_response(HTTPStatus.OK)
            body = "".join(parts).encode()
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Polyarch-State", last.state.value)
            self.end_headers()
            self.wfile.write(body)
            return
        fetch(LogRead(repo=repo, commit=sha, arch=arch))  # an unknown job: 404 before any byte is sent
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # a proxy in front passes each piece at once
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        try:
            last = read_log(fetch, repo, sha, arch, chunk, follow=True)
            chunk(("\n" if last.text and not last.text.endswith("\n") else "") + status_line(last) + "\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the reader went away: nothing more to say
        except PolyarchError as exc:  # headers are out: end the stream saying why
            chunk(f"\n[polyarch: {exc}]\n")
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(self.path.partition("?")[2]).items()}

    def _limit(self) -> int:
        text = self._query().get("limit", "20")
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIST:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"limit is a number from 1 to {MAX_LIST}")
        return int(text)

    def _commit(self, repo: str, sha: str) -> Optional[dict[str, Any]]:
        hub = self.server.hub
        status = hub.query(repo, sha)
        if not status.known:
            return None
        repo = status.repo
        return {"id": hub.store.queries.commit_id(repo, sha), "repo": repo, "commit": sha, "branch": status.branch,
                "subject": status.subject, "status": overall(status.status.value),
                "architectures": {a.arch: _arch(a) for a in status.archs}}

    def _post(self) -> None:
        if m := _ACTION.match(self.path.split("?", 1)[0]):
            self._act(int(m.group(1)), m.group(2))
            return
        if self.path.split("?", 1)[0] != "/jobs":
            raise ApiError(HTTPStatus.NOT_FOUND if not self.path.startswith("/jobs") else
                           HTTPStatus.METHOD_NOT_ALLOWED, f"POST is only for /jobs, not {self.path[:100]!r}")
        self._authorize()
        body = self._body()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, 'body must be a JSON object {"repo": ..., "commit": ...}')
        unknown = sorted(set(data) - {"repo", "commit", "architectures", "branch"})
        if unknown:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown field {unknown[0]!r}")
        repo, commit = data.get("repo"), data.get("commit")
        archs, branch = data.get("architectures", []), data.get("branch", "")
        if not isinstance(repo, str) or not isinstance(commit, str):
            raise ApiError(HTTPStatus.BAD_REQUEST, '"repo" and "commit" are required strings')
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ApiError(HTTPStatus.BAD_REQUEST, '"architectures" must be a list of names')
        if not isinstance(branch, str):
            raise ApiError(HTTPStatus.BAD_REQUEST, '"branch" must be a string')
        created = self.server.hub.submit(repo, commit, branch, archs, f"HTTP {self.client_address[0]}")
        result = self._commit(repo, commit)
        assert result is not None  # noqa: S101 - just enqueued in a committed transaction
        result["created"] = created
        self._json(HTTPStatus.CREATED if created else HTTPStatus.OK, result)

    def _act(self, job_id: int, action: str) -> None:
        """POST /jobs/{id}/cancel or /rerun: {"architectures"?: [...], "failed"?: bool (rerun)}."""
        self._authorize()
        body = self._body()
        try:
            data = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        allowed = {"architectures", "failed"} if action == "rerun" else {"architectures"}
        archs = data.get("architectures", []) if isinstance(data, dict) else None
        failed = data.get("failed", False) if isinstance(data, dict) else None
        if (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs) or set(data) - allowed
                or not isinstance(failed, bool)):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is {{}} or an object of {', '.join(sorted(allowed))}")
        found = self.server.hub.store.queries.commit_by_id(job_id)
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no job {job_id}")
        by = f"HTTP {self.client_address[0]}"
        if action == "cancel":
            done = {"cancelled": self.server.hub.cancel(found[0], found[1], archs, by)}
        else:
            done = {"rerun": self.server.hub.rerun(found[0], found[1], archs, failed, by)}
        result = self._commit(*found)
        assert result is not None  # noqa: S101 - found by id just above
        self._json(HTTPStatus.OK, {**result, **done})

    def _authorize(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        secret = self.server.secret
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), secret):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "POST needs the shared secret: Authorization: Bearer <secret>")

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required") from None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        return self.rfile.read(length)


def _arch(a) -> dict[str, Any]:
    return {"status": a.state.value, "runner": a.runner, "duration": a.duration, "attempt": a.attempt,
            "emulated": a.emulated, "tests": None if a.tests_total < 0 else
            {"total": a.tests_total, "failed": a.tests_failed}, "failed_tests": a.failed_tests,
            "reason": a.reason}


def start_api(config: Config, hub: Hub, secret: bytes) -> Optional[ApiServer]:
    """The API server, listening and serving in its own thread; None when not configured."""
    if config.dispatcher.http_listen is None:
        return None
    try:
        api = ApiServer(config, hub, secret)
    except OSError as exc:
        raise PolyarchError(f"cannot listen on {config.dispatcher.http_listen} "
                            f"({config.path}: dispatcher.http_listen): {exc.strerror}") from None
    api.start()
    return api
