"""The dispatcher daemon's transport: a threading socketserver speaking the wire protocol.

One handler thread per connection. This module keeps the framing, the TLS handshake,
the challenge-response authentication and one table from message type to (the roles
that may send it, the handler); every rule lives in the hub's service (service.py),
which the HTTP API (http_api.py) calls too. Periodic work runs in `service_actions`, on
the serve_forever thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from dispatcher import __version__
from dispatcher.common.config import Config, write_address_file
from dispatcher.common.errors import (ConfigError, InvalidName, MessageTooLarge, NotAllowed, PolyarchError,
                                      ProtocolError, StateError)
from dispatcher.common.files import atomic_write, remove_stale_temporaries
from dispatcher.common.names import check_runner
from dispatcher.common.daemon import StopRequest
from dispatcher.common.sdnotify import Watchdog, notify
from dispatcher.hub.admission import Admission
from dispatcher.hub.http_api import start_api
from dispatcher.hub.service import Hub
from dispatcher.hub.store import Policy, RunnerRow, Store
from dispatcher.wire.auth import AuthThrottle, client_mac, load_secret, new_nonce, server_proof, verify
from dispatcher.wire.errors import ErrorCode, code_for
from dispatcher.wire.protocol import (RUNNER_FEATURES, Ack, Auth, Dispatch, Error, Heartbeat, Hello, Lease,
                                      Message, NoJob, Query, Register, Release, Result, Role, Submit, Welcome,
                                      Cancel, Rerun, LogRead, StatusRead)
from dispatcher.wire.frames import Channel
from dispatcher.wire.tls import for_server

log = logging.getLogger("polyarch.dispatcher")

AUTH_TIMEOUT = 10.0


def db_path(config: Config) -> Path:
    return config.dispatcher.state_dir / "polyarch.sqlite3"


def policy_of(config: Config) -> Policy:
    return Policy(heartbeat_timeout=config.dispatcher.heartbeat_timeout, max_attempts=config.dispatcher.max_attempts,
                  retry_failed={r.name: r.retry_failed for r in config.repos})


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
        self.hub = Hub(config, store)
        self.secret = secret
        # [dispatcher.runners]: each listed runner's own secret (made on first start, like
        # the shared one, to be copied to that runner's host); unlisted runners are refused.
        self.identities = {r.name: r for r in config.dispatcher.runners}
        self.runner_secrets = {r.name: load_secret(r.token_file, create=True)
                               for r in config.dispatcher.runners if r.token_file is not None}
        self.heartbeat_timeout = config.dispatcher.heartbeat_timeout
        self.admission = Admission(config.dispatcher.max_connections, config.dispatcher.max_unauthenticated)
        self.throttle = AuthThrottle()
        self.watchdog = Watchdog()
        addr = config.dispatcher.listen
        self.address_family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        super().__init__((addr.host, addr.port), _Handler)

    @property
    def stopping(self) -> threading.Event:
        return self.hub.stopping

    def secret_for(self, role: Role, name: str) -> Optional[bytes]:
        """The secret a peer must prove: a listed runner's own, else the shared one; None
        for a runner the list does not name."""
        if role != Role.RUNNER or not self.identities:
            return self.secret
        if name not in self.identities:
            return None
        return self.runner_secrets.get(name, self.secret)

    def verify_request(self, request, client_address) -> bool:
        return self.admission.admit(request, client_address[0])

    def service_actions(self) -> None:
        # On the serve_forever thread: if it hangs, the pings stop and systemd restarts us.
        self.watchdog.ping()
        self.hub.periodic()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.hub.publisher.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self.hub.stopping.set()
            self.hub.publisher.stop()

    def stop(self) -> None:
        self.hub.stop()


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
            self.server.hub.runner_left(self.runner)

    def handle(self) -> None:
        try:
            if not self._start_tls() or not self._authenticate():
                return
            while not self.server.stopping.is_set():
                msg = self.channel.recv(self.server.config.dispatcher.idle_timeout)
                if msg is None:
                    return
                self.channel.send(self._answer(msg))
        except MessageTooLarge as exc:
            self._fail(ErrorCode.TOO_LARGE, str(exc))
        except ProtocolError as exc:
            self._fail(ErrorCode.BAD_MESSAGE, str(exc))
        except (TimeoutError, socket.timeout):
            log.info("closing idle or slow connection from %s %s", self.peer, self.name)
        except OSError as exc:
            log.info("connection from %s %s lost: %s", self.peer, self.name, exc)
        except Exception:  # one broken request must not take the server's log quiet
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
        secret = self.server.secret_for(msg.role, msg.name)
        host = self.client_address[0]
        if secret is None:
            log.warning("runner %r from %s is not in [dispatcher.runners]: refused", msg.name, self.peer)
        expected = client_mac(secret or self.server.secret, nonce, msg.nonce, msg.role.value, msg.name)
        if secret is None or not verify(expected, msg.mac):
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
        self.channel.send(Welcome(proof=server_proof(secret, nonce, msg.nonce),
                                  heartbeat_interval=max(0.2, self.server.heartbeat_timeout / 3)))
        log.debug("%s %s authenticated from %s", msg.role.value, msg.name, self.peer)
        return True

    # --- requests -----------------------------------------------------------------------

    def _answer(self, msg: Message) -> Message:
        """One request through the table to the hub; a refusal is an Error reply and the
        connection goes on. Garbage (ProtocolError from the frame) closes it, in handle."""
        entry = ROUTES.get(type(msg))
        try:
            if entry is None or (self.role or Role.CLIENT) not in entry[0]:
                role = (self.role or Role.CLIENT).value
                raise NotAllowed(f"{msg.KIND.value} is not allowed for a {role}")
            return entry[1](self, msg)
        except PolyarchError as exc:
            code = code_for(exc)
            if code == ErrorCode.UNAVAILABLE:
                log.error("refused %s from %s: %s", msg.KIND.value, self.name, exc)
                text = f"dispatcher cannot record this now: {exc}"
            else:
                log.warning("refused %s from %s (%s): %s", msg.KIND.value, self.peer, self.name, exc)
                text = str(exc)
            return Error(code, text)

    def _runner(self) -> RunnerRow:
        return self.server.hub.heard(self.runner)

    def on_dispatch(self, msg: Dispatch) -> Message:
        return Ack(created=self.server.hub.dispatch(msg.repo, msg.branch, msg.commits))

    def on_rerun(self, msg: Rerun) -> Message:
        queued = self.server.hub.rerun(msg.repo, msg.commit, msg.archs, msg.failed, f"{self.name} ({self.peer})")
        return Ack(created=queued, message=f"{queued} rerun(s) queued")

    def on_cancel(self, msg: Cancel) -> Message:
        ended = self.server.hub.cancel(msg.repo, msg.commit, msg.archs, f"{self.name} ({self.peer})")
        return Ack(created=ended, message=f"cancelled {ended} job(s)")

    def on_submit(self, msg: Submit) -> Message:
        created = self.server.hub.submit(msg.repo, msg.commit, msg.branch, msg.archs, f"{self.name} ({self.peer})")
        return Ack(created=created, message="queued" if created else "already known")

    def on_query(self, msg: Query) -> Message:
        return self.server.hub.query(msg.repo, msg.commit)

    def on_register(self, msg: Register) -> Message:
        self.runner = self.server.hub.register(self.name, msg, self.runner, self.peer)
        # What this dispatcher understands beyond the first protocol, for a newer runner to
        # use; an older dispatcher's empty message says "none of it".
        return Ack(message=RUNNER_FEATURES)

    def on_lease(self, msg: Lease) -> Message:
        job = self.server.hub.lease(self._runner(), msg.wait)
        return job if job is not None else NoJob()

    def on_heartbeat(self, msg: Heartbeat) -> Message:
        self.server.hub.heartbeat(self._runner(), msg)
        return Ack()

    def on_status_read(self, msg: StatusRead) -> Message:
        return self.server.hub.status(msg.repo, msg.commit, msg.limit)

    def on_log_read(self, msg: LogRead) -> Message:
        return self.server.hub.read_log(msg.repo, msg.commit, msg.arch, msg.offset, msg.wait, msg.source,
                                        msg.attempt)

    def on_result(self, msg: Result) -> Message:
        created, message, job = self.server.hub.record_result(self._runner(), msg)
        return Ack(created=created, message=message, job=job)

    def on_release(self, msg: Release) -> Message:
        self.server.hub.release(self._runner(), msg.lease_id, msg.reason)
        return Ack()


_OBSERVING = frozenset({Role.OBSERVER})
_ASKING = frozenset({Role.OBSERVER, Role.CLIENT})
_RUNNING = frozenset({Role.RUNNER})
# message type -> (the roles that may send it, the handler)
ROUTES: dict[type, tuple[frozenset[Role], Callable[[_Handler, Message], Message]]] = {
    Dispatch: (_OBSERVING, _Handler.on_dispatch),
    Submit: (_ASKING, _Handler.on_submit),
    Query: (_ASKING, _Handler.on_query),
    Cancel: (_ASKING, _Handler.on_cancel),
    Rerun: (_ASKING, _Handler.on_rerun),
    LogRead: (_ASKING, _Handler.on_log_read),
    StatusRead: (_ASKING, _Handler.on_status_read),
    Register: (_RUNNING, _Handler.on_register),
    Lease: (_RUNNING, _Handler.on_lease),
    Heartbeat: (_RUNNING, _Handler.on_heartbeat),
    Result: (_RUNNING, _Handler.on_result),
    Release: (_RUNNING, _Handler.on_release),
}


def serve(config: Config) -> None:
    """Run the dispatcher until SIGTERM/SIGINT. Raises PolyarchError on bad state or secret."""
    # On loopback a missing secret is made on the spot; anywhere else it must be made
    # and handed to the runners on purpose.
    with _writable(config, "dispatcher.token_file"):
        secret = load_secret(config.dispatcher.token_file, create=config.dispatcher.listen.is_loopback)
    _raise_fd_limit(config.dispatcher.max_connections)
    with _writable(config, "dispatcher.state_dir"):
        lock = _own_state(config)  # held (open) until the process exits
        store = Store(db_path(config), policy_of(config))
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
    stop = StopRequest()  # first or second signal alike: the dispatcher's work is already durable
    stop.install()
    host, port = server.server_address[:2]
    write_address_file(config, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        api = start_api(config, server.hub, secret)
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
        os.close(lock)


@contextlib.contextmanager
def _writable(config: Config, key: str) -> Iterator[None]:
    """A path the dispatcher must create or write but cannot (a read-only /etc under the
    unit's ProtectSystem=strict, a missing permission) is a setup mistake: one line
    naming the path and its setting, exit 2, so that systemd does not restart it forever."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
            raise
        where = exc.filename or "?"
        raise ConfigError(config.path, key, f"cannot write {where}: {exc.strerror}; point {key} at a writable "
                          "place (under systemd: the unit's StateDirectory, /var/lib/polyarch)") from None


def _own_state(config: Config) -> int:
    """One dispatcher per state: an exclusive lock on state_dir/dispatcher.lock, which the
    kernel drops when the process dies however it dies. A second one would expire the
    first one's leases and run every hook twice."""
    state_dir = config.dispatcher.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "dispatcher.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateError(f"another dispatcher (pid {holder}) is running on {state_dir}; stop it first, or give "
                         f"this one its own dispatcher.state_dir in {config.path}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _raise_fd_limit(max_connections: int) -> None:
    """One descriptor per connection: lift the soft limit (often 1024) toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open-file limit %d is below max_connections + 256 = %d; raise LimitNOFILE", new, want)
