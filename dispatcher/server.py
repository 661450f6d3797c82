"""The dispatcher daemon: a threading socketserver over the Store.

One handler thread per connection. Runners long-poll for work: a LEASE request waits on
a condition that every enqueue notifies, so a new job reaches a waiting runner within
milliseconds. Periodic work (expiring leases, waking the publisher for results a crash
or a full disk left unwritten, recording when runners were seen) runs in
`service_actions`, on the serve_forever thread. Result files, the dashboard and hooks
are the publisher's (publisher.py); the HTTP API is http_api.py.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .admission import Admission
from .auth import AuthThrottle, client_mac, load_secret, new_nonce, server_proof, verify
from .config import Config, RepoConfig, write_address_file
from .errors import (ConfigError, InvalidName, MessageTooLarge, PolyarchError, ProtocolError, StateError,
                     UnknownName)
from .fsutil import atomic_write, remove_stale_temporaries
from .http_api import start_api
from .names import check_branch, check_commit, check_repo, check_runner, parse_arch
from .protocol import (Ack, Auth, Channel, CommitInfo, Dispatch, Error, ErrorCode, Heartbeat, Hello, Job, Lease,
                       Message, NoJob, Query, Register, Release, Result, Role, Status, Submit, Welcome)
from .metrics import Metrics
from .presence import FLUSH_INTERVAL, Presence
from .publisher import Publisher
from .sdnotify import Watchdog, notify
from .tls import for_server
from .status import commit_status
from .store import JobState, RunnerRow, Store

log = logging.getLogger("polyarch.dispatcher")

AUTH_TIMEOUT = 10.0
MAX_LEASE_WAIT = 30.0
SERVICE_INTERVAL = 0.2
MAX_COMMITS_PER_DISPATCH = 1000


def db_path(config: Config) -> Path:
    return config.dispatcher.state_dir / "polyarch.sqlite3"


class _Reply(Exception):
    """Raised inside a request handler to answer with an error and keep the connection."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DispatcherServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of connecting runners would see dropped
    # SYNs and one-second retransmits. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False

    def __init__(self, config: Config, store: Store, secret: bytes) -> None:
        self.config = config
        self.tls = for_server(config)
        self.store = store
        self.secret = secret
        self.results_dir = config.dispatcher.results_dir
        self.heartbeat_timeout = config.dispatcher.heartbeat_timeout
        self.stopping = threading.Event()
        self._work = threading.Condition()
        self._generation = 0
        self.admission = Admission(config.dispatcher.max_connections, config.dispatcher.max_unauthenticated)
        self.throttle = AuthThrottle()
        self._next_service = 0.0
        self._last_service_error = ""
        self.watchdog = Watchdog()
        self.presence = Presence()
        self.metrics = Metrics()
        self.retry_failed = {r.name: r.retry_failed for r in config.repos}
        self.publisher = Publisher(config, store, self.metrics)
        self._next_flush = 0.0
        addr = config.dispatcher.listen
        self.address_family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        super().__init__((addr.host, addr.port), _Handler)

    # --- connection accounting ----------------------------------------------------------

    def verify_request(self, request, client_address) -> bool:
        return self.admission.admit(request, client_address[0])

    # --- work queue ---------------------------------------------------------------------

    def notify_work(self) -> None:
        with self._work:
            self._generation += 1
            self._work.notify_all()

    def wait_for_job(self, runner: RunnerRow, wait: float) -> Optional[Job]:
        arch = runner.arch
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_LEASE_WAIT)
        while not self.stopping.is_set():
            with self._work:
                generation = self._generation
            row = self.store.claim(runner, self.heartbeat_timeout,
                                   alone=not self.presence.others(arch, runner.name))
            if row is not None:
                repo = self.config.repo(row.repo)
                if repo is None:
                    self._finish_orphan(row.lease_id, row.repo)
                    continue
                log.info("leased %s %s %s to %s (attempt %d)", row.repo, row.sha[:12], arch, runner.name,
                         row.attempt)
                return Job(lease_id=row.lease_id or "", repo=row.repo, url=repo.url, branch=row.branch,
                           commit=row.sha, arch=arch, attempt=row.attempt, test_command=repo.test_command,
                           timeout=repo.timeout,
                           timeout_factor=self.config.timeout_factor(parse_arch(arch), runner.emulated))
            with self._work:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._generation == generation:
                    self._work.wait(remaining)
        return None

    def _finish_orphan(self, lease_id: Optional[str], repo: str) -> None:
        now = time.time()
        reason = f"repo {repo!r} is no longer in {self.config.path}"
        self.store.finish(lease_id or "", Status.ERROR, None, now, now, reason.encode() + b"\n", False, b"", reason)
        self.wake_publisher()

    # --- requests shared by the protocol and the HTTP API --------------------------------

    def repo(self, name: str) -> RepoConfig:
        repo = self.config.repo(check_repo(name))
        if repo is None:
            raise UnknownName("repo", f"unknown repo {name!r} (not in {self.config.path})")
        return repo

    def submit(self, repo_name: str, commit: str, branch: str, archs: list[str], by: str) -> int:
        """Queue one commit on some (default: all) of its repo's archs; returns new jobs.
        Raises InvalidName or UnknownName, having changed nothing."""
        repo = self.repo(repo_name)
        check_commit(commit)
        branch = check_branch(branch) if branch else repo.branches[0]
        chosen = [parse_arch(a) for a in archs] or list(repo.architectures)
        unknown = [a.value for a in chosen if a not in repo.architectures]
        if unknown:
            raise UnknownName("arch", f"{', '.join(unknown)} not configured for repo {repo.name}")
        created = self.store.enqueue(repo.name, branch, [CommitInfo(commit)], [a.value for a in chosen])
        if created:
            log.info("queued %d job(s) for %s %s (submitted by %s)", created, repo.name, commit[:12], by)
            self.notify_work()
        return created

    # --- results ------------------------------------------------------------------------

    def wake_publisher(self) -> None:
        self.publisher.wake()

    # --- periodic work ------------------------------------------------------------------

    def service_actions(self) -> None:
        # On the serve_forever thread: if it hangs, the pings stop and systemd restarts us.
        self.watchdog.ping()
        now = time.monotonic()
        if now < self._next_service:
            return
        self._next_service = now + SERVICE_INTERVAL
        try:
            expired = self.store.expire(self.config.dispatcher.max_attempts)
            for e in expired:
                what = "re-queued" if e.requeued else "given up (status error)"
                log.warning("lease of %s %s %s expired: runner %s sent no heartbeat for %.0f s; job %s",
                            e.job.repo, e.job.sha[:12], e.job.arch, e.job.runner, self.heartbeat_timeout, what)
            if expired:
                self.metrics.expired(len(expired))
                self.notify_work()
            if self.store.has_unpublished():
                self.wake_publisher()  # results a crash or a full disk left unwritten
            if now >= self._next_flush:
                self._next_flush = now + FLUSH_INTERVAL
                seen = self.presence.take_seen()
                try:
                    self.store.touch_runners(seen)
                except StateError:
                    self.presence.put_back(seen)
                    raise
            if self._last_service_error:
                log.info("periodic work succeeds again")
                self._last_service_error = ""
        except PolyarchError as exc:
            # Every 0.2 s while a disk is full: say it once, then again only if it changes.
            if str(exc) != self._last_service_error:
                log.error("periodic work failed: %s", exc)
            self._last_service_error = str(exc)
        except Exception:  # noqa: BLE001 - the serve loop must survive anything here
            log.exception("periodic work failed")

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.publisher.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self.stopping.set()
            self.publisher.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.notify_work()
        self.publisher.wake()


class _Handler(socketserver.BaseRequestHandler):
    server: DispatcherServer

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = self.request  # the accepted socket, as Admission knows it (TLS wraps it below)
        self.channel = Channel(self.request)
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.role: Optional[Role] = None
        self.name = ""
        self.runner: Optional[RunnerRow] = None

    def _start_tls(self) -> bool:
        """The TLS handshake, here in the connection's thread: a slow peer stalls only itself."""
        if self.server.tls is None:
            return True
        self.request.settimeout(AUTH_TIMEOUT)
        try:
            self.channel = Channel(self.server.tls.wrap_socket(self.request, server_side=True))
            return True
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake with %s failed: %s", self.peer, exc)
            return False

    def finish(self) -> None:
        self.server.admission.closed(self.raw)  # before the close: see Admission._evict_oldest
        self.channel.close()
        if self.runner is not None:
            self.server.presence.left(self.runner.name)
            # A retry kept away from its failing runner may now have nobody else to run it.
            self.server.notify_work()

    def handle(self) -> None:
        try:
            if not self._start_tls() or not self._authenticate():
                return
            while not self.server.stopping.is_set():
                msg = self.channel.recv(self.server.config.dispatcher.idle_timeout)
                if msg is None:
                    return
                try:
                    reply = self._dispatch(msg)
                except _Reply as exc:
                    reply = Error(exc.code, str(exc))
                    log.warning("refused %s from %s (%s): %s", msg.KIND.value, self.peer, self.name, exc)
                self.channel.send(reply)
        except MessageTooLarge as exc:
            self._fail(ErrorCode.TOO_LARGE, str(exc))
        except ProtocolError as exc:
            self._fail(ErrorCode.BAD_MESSAGE, str(exc))
        except (TimeoutError, socket.timeout):
            log.info("closing idle or slow connection from %s %s", self.peer, self.name)
        except OSError as exc:
            log.info("connection from %s %s lost: %s", self.peer, self.name, exc)
        except Exception:  # noqa: BLE001 - one broken request must not take the server's log quiet
            log.exception("internal error serving %s %s; connection closed", self.peer, self.name)
            self._fail(ErrorCode.INTERNAL, "internal error; see the dispatcher's log")

    def _fail(self, code: ErrorCode, message: str) -> None:
        log.warning("closing connection from %s %s: %s", self.peer, self.name, message)
        try:
            self.channel.send(Error(code, message))
        except OSError:
            pass

    def _authenticate(self) -> bool:
        nonce = new_nonce()
        self.channel.send(Hello(nonce=nonce, server=f"polyarch-dispatcher {__version__}"))
        msg = self.channel.recv(AUTH_TIMEOUT)
        if msg is None:
            return False
        if not isinstance(msg, Auth):
            raise ProtocolError(f"expected auth, got {msg.KIND.value}")
        try:
            check_runner(msg.name)  # every peer's name ends up in logs: no control characters
        except InvalidName as exc:
            raise ProtocolError(str(exc)) from None
        expected = client_mac(self.server.secret, nonce, msg.nonce, msg.role.value, msg.name)
        host = self.client_address[0]
        if not verify(expected, msg.mac):
            delay = self.server.throttle.failed(host)
            if delay:
                # Repeated guesses from one address: each answer comes later than the last.
                log.warning("authentication from %s as %r failed again; answering in %.2f s", self.peer,
                            msg.name, delay)
                time.sleep(delay)
            self._fail(ErrorCode.AUTH_FAILED, "authentication failed: wrong shared secret")
            return False
        self.server.throttle.succeeded(host)
        self.server.admission.authenticated(self.raw)
        self.role, self.name = msg.role, msg.name
        self.channel.send(Welcome(proof=server_proof(self.server.secret, nonce, msg.nonce),
                                  heartbeat_interval=max(0.2, self.server.heartbeat_timeout / 3)))
        log.debug("%s %s authenticated from %s", msg.role.value, msg.name, self.peer)
        return True

    # --- requests -----------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> Message:
        allowed = {
            Role.OBSERVER: (Dispatch, Submit, Query),
            Role.CLIENT: (Submit, Query),
            Role.RUNNER: (Register, Lease, Heartbeat, Result, Release),
        }[self.role or Role.CLIENT]
        if not isinstance(msg, allowed):
            raise _Reply(ErrorCode.NOT_ALLOWED, f"{msg.KIND.value} is not allowed for a {self.role.value}")
        try:
            if isinstance(msg, Dispatch):
                return self._on_dispatch(msg)
            if isinstance(msg, Submit):
                return self._on_submit(msg)
            if isinstance(msg, Query):
                repo = self._repo(msg.repo)
                return commit_status(self.server.store, self.server.results_dir, repo.name, check_commit(msg.commit))
            if isinstance(msg, Register):
                return self._on_register(msg)
            if self.runner is None:
                raise _Reply(ErrorCode.NOT_ALLOWED, "register first")
            self.server.presence.heard(self.runner.name)
            if isinstance(msg, Lease):
                job = self.server.wait_for_job(self.runner, msg.wait)
                return job if job is not None else NoJob()
            if isinstance(msg, Heartbeat):
                if self.server.store.heartbeat(msg.lease_id, self.server.heartbeat_timeout):
                    return Ack()
                raise _Reply(ErrorCode.LEASE_LOST, "lease is no longer yours")
            if isinstance(msg, Result):
                return self._on_result(msg)
            assert isinstance(msg, Release)  # noqa: S101 - narrowing: `allowed` above admits nothing else
            job = self.server.store.release(msg.lease_id)
            if job is not None:
                log.info("runner %s handed back %s %s %s: %s", self.name, job.repo, job.sha[:12], job.arch,
                         msg.reason or "stopping")
                self.server.notify_work()
            return Ack()
        except InvalidName as exc:
            raise _Reply(ErrorCode.INVALID_NAME, str(exc)) from None
        except StateError as exc:
            log.error("refused %s from %s: %s", msg.KIND.value, self.name, exc)
            raise _Reply(ErrorCode.UNAVAILABLE, f"dispatcher cannot record this now: {exc}") from None

    def _repo(self, name: str) -> RepoConfig:
        try:
            return self.server.repo(name)
        except UnknownName as exc:
            raise _Reply(ErrorCode.UNKNOWN_REPO, str(exc)) from None

    def _on_dispatch(self, msg: Dispatch) -> Message:
        repo = self._repo(msg.repo)
        check_branch(msg.branch)
        if len(msg.commits) > MAX_COMMITS_PER_DISPATCH:
            raise _Reply(ErrorCode.BAD_MESSAGE, f"more than {MAX_COMMITS_PER_DISPATCH} commits in one message")
        for c in msg.commits:
            check_commit(c.sha)
        created = self.server.store.enqueue(repo.name, msg.branch, msg.commits, [a.value for a in repo.architectures])
        if created:
            log.info("queued %d job(s) for %d commit(s) of %s/%s", created, len(msg.commits), repo.name, msg.branch)
            self.server.notify_work()
        return Ack(created=created)

    def _on_submit(self, msg: Submit) -> Message:
        try:
            created = self.server.submit(msg.repo, msg.commit, msg.branch, msg.archs, f"{self.name} ({self.peer})")
        except UnknownName as exc:
            code = ErrorCode.UNKNOWN_REPO if exc.kind == "repo" else ErrorCode.UNKNOWN_ARCH
            raise _Reply(code, str(exc)) from None
        return Ack(created=created, message="queued" if created else "already known")

    def _on_register(self, msg: Register) -> Message:
        check_runner(self.name)
        arch = parse_arch(msg.arch).value
        now = time.time()
        previous = self.runner
        self.runner = RunnerRow(self.name, arch, msg.host[:200], msg.machine[:50], msg.version[:50], msg.emulated,
                                msg.kernel[:100], now, now)
        self.server.store.register_runner(self.runner)
        if previous is not None:
            self.server.presence.left(previous.name)
        self.server.presence.arrived(self.runner)
        log.info("runner %s registered from %s: %s (%s%s), polyarch %s", self.name, self.peer, arch, msg.machine,
                 ", emulated" if msg.emulated else "", msg.version)
        self.server.notify_work()
        return Ack()

    def _on_result(self, msg: Result) -> Message:
        if msg.status == Status.FLAKY:
            raise _Reply(ErrorCode.BAD_MESSAGE, "status flaky is the dispatcher's to give, not a runner's")
        retries = self.server.retry_failed
        job = self.server.store.finish(msg.lease_id, msg.status, msg.exit_code, msg.started_at, msg.finished_at,
                                       msg.log.encode("utf-8", "replace"), msg.log_truncated,
                                       msg.junit.encode("utf-8", "replace"), msg.reason, retry_failed=retries)
        if job is not None and job.state == JobState.QUEUED:
            log.info("%s %s %s %s on %s (attempt %d); retry %d of %d, on another runner if one is connected",
                     job.repo, job.sha[:12], job.arch, msg.status.value, self.name, job.attempt, job.retries,
                     retries.get(job.repo, 0))
            self.server.notify_work()
            return Ack(created=1, message="recorded; the job runs again (retry_failed)")
        if job is None:
            late = self.server.store.job_by_lease(msg.lease_id)
            what = f"{late.repo} {late.sha[:12]} {late.arch}" if late else "an unknown lease"
            log.warning("dropped late or duplicate result from %s for %s", self.name, what)
            return Ack(created=0, message="late or duplicate result: discarded")
        self.server.wake_publisher()  # files follow; the result is already durable
        return Ack(created=1, message="recorded")


def serve(config: Config) -> None:
    """Run the dispatcher until SIGTERM/SIGINT. Raises PolyarchError on bad state or secret."""
    # On loopback a missing secret is made on the spot; anywhere else it must be made
    # and handed to the runners on purpose.
    secret = load_secret(config.dispatcher.token_file, create=config.dispatcher.listen.is_loopback)
    _raise_fd_limit(config.dispatcher.max_connections)
    store = Store(db_path(config), lease_grace=config.dispatcher.heartbeat_timeout)
    results = config.dispatcher.results_dir
    try:
        removed = remove_stale_temporaries(results)
        results.mkdir(parents=True, exist_ok=True)
        probe = results / ".polyarch-write-probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        store.close()
        raise ConfigError(config.path, "dispatcher.results_dir",
                          f"{results} is not a writable folder: {exc.strerror or exc}") from None
    if removed:
        log.info("removed %d temporary file(s) a crash left in %s", removed, results)
    try:
        server = DispatcherServer(config, store, secret)
    except OSError as exc:
        store.close()
        raise PolyarchError(f"cannot listen on {config.dispatcher.listen} ({config.path}: dispatcher.listen): "
                            f"{exc.strerror}") from None
    stop = threading.Event()

    def on_signal(signum, frame) -> None:  # only records; the main thread acts
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = server.server_address[:2]
    write_address_file(config, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        api = start_api(server)
    except PolyarchError:
        server.server_close()
        store.close()
        raise
    if api is not None:
        api_host, api_port = api.server_address[:2]
        atomic_write(config.dispatcher.state_dir / "http-address",
                     f"{api_host}:{api_port}\n".encode(), durable=False)
        log.info("HTTP API on http://%s:%d/", api_host, api_port)
        if not config.dispatcher.http_listen.is_loopback:
            log.warning("HTTP API listens off loopback without TLS: the bearer secret of POST /jobs crosses the "
                        "network in clear; put a TLS reverse proxy in front, or listen on loopback")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="serve")
    thread.start()
    log.info("dispatcher listening on %s:%d, state %s, results %s", host, port, db_path(config),
             config.dispatcher.results_dir)
    notify("READY=1")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        notify("STOPPING=1")
        server.stop()
        if api is not None:
            api.shutdown()
        server.shutdown()
        server.server_close()
        thread.join()
        # The store is not closed: handler threads may still be finishing a request, and
        # every acknowledged change is already committed.


def _raise_fd_limit(max_connections: int) -> None:
    """One descriptor per connection: lift the soft limit (often 1024) toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open-file limit %d is below max_connections + 256 = %d; raise LimitNOFILE", new, want)
