"""The dispatcher as a daemon: `polyarch-dispatcher serve`.

Checks what it needs before it serves (the secret, a state no other dispatcher holds, a
writable results folder, enough descriptors), starts the socket server (server.py) and
the HTTP API, says READY to systemd, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import threading
from pathlib import Path
from typing import Iterator

from dispatcher.common.config import Config, write_address_file
from dispatcher.common.daemon import StopRequest
from dispatcher.common.errors import ConfigError, PolyarchError, StateError
from dispatcher.common.files import atomic_write, remove_stale_temporaries
from dispatcher.common.sdnotify import notify
from dispatcher.hub.http_api import start_api
from dispatcher.hub.server import DispatcherServer, state_location, policy_of
from dispatcher.hub.store import Store
from dispatcher.wire.auth import load_secret

log = logging.getLogger("polyarch.dispatcher")


def serve(config: Config) -> None:
    """Run the dispatcher until SIGTERM/SIGINT. Raises PolyarchError on bad state or secret."""
    # On loopback a missing secret is made on the spot; anywhere else it must be made
    # and handed to the runners on purpose.
    with _writable(config, "dispatcher.token_file"):
        secret = load_secret(config.dispatcher.token_file, create=config.dispatcher.listen.is_loopback)
    _raise_fd_limit(config.dispatcher.max_connections)
    with _writable(config, "dispatcher.state_dir"):
        lock = _own_state(config)  # held (open) until the process exits
        store = Store(state_location(config), policy_of(config))
    results = config.dispatcher.results_dir
    try:
        # In a folder shared with other dispatchers, a temporary may be the publishing
        # one's file in flight: the publisher removes them when it takes over instead.
        removed = 0 if store.db.shared else remove_stale_temporaries(results)
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
    log.info("dispatcher listening on %s:%d, state %s, results %s", host, port, store.path,
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
        # every acknowledged change is already committed. Other dispatchers on the state
        # adopt this one's leases now rather than after heartbeat_timeout.
        try:
            store.peers.leave()
        except PolyarchError as exc:
            log.warning("could not say goodbye to the other dispatchers: %s", exc)
        os.close(lock)


def copy_state_to(config: Config, target: str) -> dict[str, int]:
    """The configured SQLite state copied into the PostgreSQL database `target`, while no
    dispatcher runs on it (its lock is taken: a copy beside a live dispatcher would miss
    what it writes after). Rows per table."""
    from dispatcher.common.config import check_state
    from dispatcher.hub.store.copy import copy_state

    try:
        if check_state(target) == "sqlite":
            raise ValueError("copy --to a PostgreSQL database")
    except ValueError as exc:
        raise ConfigError(config.path, "--to", f"{target!r}: {exc}") from None
    source = state_location(config)
    if not isinstance(source, Path):
        raise ConfigError(config.path, "dispatcher.state", "the state is on PostgreSQL already; copy moves a SQLite "
                          "state (dispatcher.state = \"sqlite\") over")
    if not source.exists():
        raise StateError(f"no state database at {source} (has the dispatcher run with this config?)")
    lock = _own_state(config)
    try:
        return copy_state(source, target)
    finally:
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
