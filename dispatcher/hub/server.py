"""The dispatcher daemon's transport: a threading socketserver speaking the wire protocol.

socketserver accepts and starts a thread for each connection's TLS and authentication;
then the park (park.py) keeps it without a thread and runs each request on a bounded
pool. This module keeps the framing, the TLS handshake, the challenge-response
authentication and one table from message type to (the roles that may send it, the
handler); every rule lives in the hub's service (service.py), which the HTTP API
(http_api.py) calls too. Periodic work runs in `service_actions`, on the serve_forever
thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

from dispatcher import __version__
from dispatcher.common.config import Config
from dispatcher.common.errors import (InvalidName, MessageTooLarge, NotAllowed, PolyarchError,
                                      ProtocolError)
from dispatcher.common.names import check_runner
from dispatcher.common.sdnotify import Watchdog
from dispatcher.hub.admission import Admission
from dispatcher.hub.park import Park, WaitForWork
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


def state_location(config: Config) -> Union[Path, str]:
    """Where the state is: the SQLite file in state_dir, or the configured PostgreSQL URL."""
    state = config.dispatcher.state
    return config.dispatcher.state_dir / "polyarch.sqlite3" if state == "sqlite" else state


def local_state(config: Config) -> Union[Path, str, None]:
    """The state where this host can read it: a PostgreSQL URL (reachable from anywhere
    it is configured), or the SQLite file if it is on this host; None otherwise."""
    location = state_location(config)
    return location if isinstance(location, str) or location.exists() else None


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
        self.park = Park(config.dispatcher.idle_timeout, lambda: self.hub.generation,
                         store.queries.queued_count)
        self.hub.on_work(self.park.work_for)
        self.hub.speaking = self.speaking
        self._runner_conns: dict[str, _Handler] = {}  # runner name -> its registered connection
        self._kept: set[socket.socket] = set()
        self._kept_lock = threading.Lock()
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

    def keep(self, request: socket.socket) -> None:
        """The handler handed this connection to the park: socketserver must not close it."""
        with self._kept_lock:
            self._kept.add(request)

    def registered(self, handler: "_Handler") -> None:
        with self._kept_lock:
            self._runner_conns[handler.name] = handler

    def unregistered(self, handler: "_Handler") -> None:
        with self._kept_lock:
            if self._runner_conns.get(handler.name) is handler:
                del self._runner_conns[handler.name]

    def speaking(self, runner: str) -> bool:
        """Whether `runner` has a request on its way through this server (for Hub.speaking)."""
        with self._kept_lock:
            handler = self._runner_conns.get(runner)
        return handler is not None and handler.parked and self.park.speaking(handler)

    def shutdown_request(self, request) -> None:
        with self._kept_lock:
            if request in self._kept:
                self._kept.discard(request)
                return
        super().shutdown_request(request)

    def stop(self) -> None:
        self.hub.stop()
        self.park.close()


class _Handler(socketserver.BaseRequestHandler):
    """One connection. Its handshake runs on the accepting thread socketserver starts;
    then the park (park.py) owns it, and each request runs on one of the park's workers."""

    server: DispatcherServer

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw = self.request  # the accepted socket, as Admission knows it (TLS wraps it below)
        self.channel = Channel(self.request)
        self.peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.role: Optional[Role] = None
        self.name = ""
        self.runner: Optional[RunnerRow] = None
        self.parked = False
        self._closed = False
        self._close_lock = threading.Lock()

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

    def handle(self) -> None:
        if self._guarded(lambda: self._start_tls() and self._authenticate()):
            self.parked = True
            self.server.keep(self.request)
            self.server.park.adopt(self)

    def finish(self) -> None:
        if not self.parked:
            self.close()

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.parked:
            self.server.park.forget(self)  # before the close: the fd may be reused at once
        self.server.admission.closed(self.raw)  # before the close: see Admission._evict_oldest
        self.channel.close()
        if self.runner is not None:
            self.server.unregistered(self)
            self.server.hub.runner_left(self.runner)

    def close_idle(self) -> None:
        log.info("closing idle or slow connection from %s %s", self.peer, self.name)
        self.close()

    def _guarded(self, step: Callable[[], object]) -> bool:
        """Run one step of the conversation; False (the connection must close) on EOF or
        on anything wrong, which is logged and, where the peer can use it, answered."""
        try:
            return bool(step())
        except MessageTooLarge as exc:
            self._fail(ErrorCode.TOO_LARGE, str(exc))
        except ProtocolError as exc:
            self._fail(ErrorCode.BAD_MESSAGE, str(exc))
        except (TimeoutError, socket.timeout):
            log.info("closing slow connection from %s %s", self.peer, self.name)
        except OSError as exc:
            log.info("connection from %s %s lost: %s", self.peer, self.name, exc)
        except Exception:  # one broken request must not take the server's log quiet
            log.exception("internal error serving %s %s; connection closed", self.peer, self.name)
            self._fail(ErrorCode.INTERNAL, "internal error; see the dispatcher's log")
        return False

    def _fail(self, code: ErrorCode, message: str) -> None:
        log.warning("closing connection from %s %s: %s", self.peer, self.name, message)
        try:
            self.channel.send(Error(code, message))
        except OSError:
            pass

    # --- what the park calls (park.Parked) ------------------------------------------------

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def has_buffered(self) -> bool:
        sock = self.channel.sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def serve_one(self) -> None:
        """The peer has something for us: a frame (read whole within idle_timeout, as
        before), or EOF."""
        if not self._guarded(self._one):
            self.close()

    def _one(self) -> bool:
        msg = self.channel.recv(self.server.config.dispatcher.idle_timeout)
        if msg is None or self.server.stopping.is_set():
            return False
        if isinstance(msg, LogRead) and msg.wait > 0:
            # A follower's read waits up to MAX_LEASE_WAIT for output: a thread of its own,
            # not one of the pool's.
            threading.Thread(target=self._reply_to, args=(lambda: self._answer(msg),), daemon=True,
                             name=f"follow {self.peer}").start()
            return True
        self._reply_to(lambda: self._answer(msg))
        return True

    def _reply_to(self, answer: Callable[[], Message | WaitForWork],
                  wait: Optional[Callable[[WaitForWork], None]] = None) -> None:
        """Send `answer()`'s reply and park the connection, or, for a lease that found
        nothing, hand it to `wait` (default: the park's waiters)."""
        def step() -> bool:
            reply = answer()
            if isinstance(reply, WaitForWork):
                (wait or (lambda w: self.server.park.wait_for_work(self, w)))(reply)
            else:
                self.channel.send(reply)
                self.server.park.park(self)
            return True

        if not self._guarded(step):
            self.close()

    def lease_again(self, wait: WaitForWork, timed_out: bool) -> None:
        """A parked lease: work came for its arch (look again), or its deadline passed."""
        if timed_out or self.server.stopping.is_set():
            self._reply_to(NoJob)
        else:
            self._reply_to(lambda: self._call(Lease.KIND.value, lambda: self._lease(wait.deadline, wait.hops)),
                           lambda again: self.server.park.found_nothing(self, again))

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

    def _answer(self, msg: Message) -> Message | WaitForWork:
        """One request through the table to the hub; a refusal is an Error reply and the
        connection goes on. Garbage (ProtocolError from the frame) closes it, in _guarded."""
        entry = ROUTES.get(type(msg))
        role = self.role or Role.CLIENT
        if entry is None or role not in entry[0]:
            return self._call(msg.KIND.value, lambda: _refuse(f"{msg.KIND.value} is not allowed for a {role.value}"))
        return self._call(msg.KIND.value, lambda: entry[1](self, msg))

    def _call(self, kind: str, handler: Callable[[], Message | WaitForWork]) -> Message | WaitForWork:
        try:
            return handler()
        except PolyarchError as exc:
            code = code_for(exc)
            if code == ErrorCode.UNAVAILABLE:
                log.error("refused %s from %s: %s", kind, self.name, exc)
                text = f"dispatcher cannot record this now: {exc}"
            else:
                log.warning("refused %s from %s (%s): %s", kind, self.peer, self.name, exc)
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
        self.server.registered(self)
        # What this dispatcher understands beyond the first protocol, for a newer runner to
        # use; an older dispatcher's empty message says "none of it".
        return Ack(message=RUNNER_FEATURES)

    def on_lease(self, msg: Lease) -> Message | WaitForWork:
        if msg.ahead:  # never waits: the runner is busy with a job meanwhile
            return self.server.hub.lease_ahead(self._runner()) or NoJob()
        return self._lease(Hub.lease_deadline(msg.wait), 0)

    def _lease(self, deadline: float, hops: int) -> Message | WaitForWork:
        """A job now, NoJob when the wait is over, or the wait to park."""
        hub = self.server.hub
        runner = self._runner()
        generation = hub.generation
        job = hub.lease_now(runner)
        if job is not None:
            return job
        if time.monotonic() >= deadline or self.server.stopping.is_set():
            return NoJob()
        return WaitForWork(runner.arch, deadline, generation, hops)

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


def _refuse(why: str) -> Message:
    raise NotAllowed(why)


_OBSERVING = frozenset({Role.OBSERVER})
_ASKING = frozenset({Role.OBSERVER, Role.CLIENT})
_RUNNING = frozenset({Role.RUNNER})
# message type -> (the roles that may send it, the handler)
ROUTES: dict[type, tuple[frozenset[Role], Callable[[_Handler, Message], Message | WaitForWork]]] = {
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
