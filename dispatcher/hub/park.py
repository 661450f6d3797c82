"""Connections between requests cost no thread: one epoll thread watches them all.

After authentication a connection is *parked*: its socket is armed in an epoll set
(EPOLLONESHOT, so exactly one thread ever takes it). When a frame arrives, a bounded
pool of worker threads reads it, answers it, and parks the connection again. A runner's
lease that finds nothing queued waits parked too, as a *waiter* of its architecture:
Hub.notify_work wakes as many of that architecture's waiters as there are jobs queued
(the oldest first), and the lease's deadline answers NoJob. A waiter's socket stays
armed, so a runner that hangs up while it waits is gone at once, not when work comes.
Idle connections are closed after `idle_timeout`, as a thread's read timeout did.

So a dispatcher's threads are the pool's, the accepting ones (a connection is handed
here right after its handshake) and a thread per log follower, however many runners
are connected. The rules stay in the hub: this module only decides which thread runs
a connection's next request, and when.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import heapq
import itertools
import logging
import select
import struct
import termios
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Protocol

log = logging.getLogger("polyarch.dispatcher")

WORKERS = 32  # enough to keep SQLite (one writer) and a few slow uploads busy; threads start as needed
TICK = 0.1  # s: how late a lease's deadline or an idle close may be
MAX_HOPS = 8  # a waiter that found nothing while work is queued wakes the next one, this many times


class Parked(Protocol):
    """A connection the park can run: the socket handler implements it."""

    def fileno(self) -> int: ...
    def has_buffered(self) -> bool: ...
    def serve_one(self) -> None: ...
    def lease_again(self, wait: "WaitForWork", timed_out: bool) -> None: ...
    def close_idle(self) -> None: ...
    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class WaitForWork:
    """A lease that found nothing: park the runner until work for `arch` or `deadline`
    (monotonic). `generation` is the hub's, read before the lease looked."""

    arch: str
    deadline: float
    generation: int
    hops: int = 0


class _State(enum.Enum):
    IDLE = "idle"  # armed, waiting for the peer's next frame
    WAITING = "waiting"  # armed, and a waiter of its arch
    BUSY = "busy"  # a thread has it


@dataclasses.dataclass
class _Entry:
    conn: Parked
    state: _State = _State.BUSY
    since: float = 0.0  # monotonic: when it was last parked
    wait: Optional[WaitForWork] = None


class Park:
    def __init__(self, idle_timeout: float, generation: Callable[[], int],
                 queued: Callable[[str, int], int], workers: int = WORKERS) -> None:
        self.idle_timeout = idle_timeout
        self._generation = generation
        self._queued = queued
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}  # fd -> entry
        self._waiters: dict[str, OrderedDict[int, None]] = {}  # arch -> fds, oldest first
        self._deadlines: list[tuple[float, int, int]] = []  # heap of (deadline, seq, fd)
        self._seq = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="request")
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="park", daemon=True)
        self._thread.start()

    # --- from the handlers ------------------------------------------------------------

    def adopt(self, conn: Parked) -> None:
        """A connection just authenticated: from now on the park runs it."""
        with self._lock:
            self._entries[conn.fileno()] = _Entry(conn)
        self.park(conn)

    def park(self, conn: Parked) -> None:
        """Its request is answered: wait for the next one without a thread."""
        self._arm(conn, _State.IDLE, None)

    def wait_for_work(self, conn: Parked, wait: WaitForWork) -> None:
        """Its lease found nothing: wait for work of `wait.arch`, or the deadline."""
        self._arm(conn, _State.WAITING, wait)
        if self._generation() != wait.generation:
            self._take_waiter(conn.fileno(), timed_out=False)  # work came while it looked

    def _arm(self, conn: Parked, state: _State, wait: Optional[WaitForWork]) -> None:
        fd = conn.fileno()
        if self._closing.is_set():
            self._close(fd, conn)
            return
        if state == _State.IDLE and conn.has_buffered():
            self._submit(fd, conn, conn.serve_one)  # TLS already holds its next frame
            return
        with self._lock:
            entry = self._entries.get(fd)
            if entry is None or entry.conn is not conn:
                return
            entry.state, entry.since, entry.wait = state, time.monotonic(), wait
            if wait is not None:
                self._waiters.setdefault(wait.arch, OrderedDict())[fd] = None
                self._seq += 1
                heapq.heappush(self._deadlines, (wait.deadline, self._seq, fd))
            mask = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
            try:
                try:
                    self._epoll.modify(fd, mask)
                except FileNotFoundError:
                    self._epoll.register(fd, mask)
                return
            except ValueError:  # the epoll set is closed: the dispatcher stops
                pass
        self._close(fd, conn)

    # --- from the hub ---------------------------------------------------------------------

    def work_for(self, archs: tuple[str, ...]) -> None:
        """Hub.notify_work's listener: wake waiters of `archs` (none: every arch)."""
        if not self._closing.is_set():
            try:
                self._pool.submit(self._wake, archs)
            except RuntimeError:  # shut down meanwhile
                pass

    def _wake(self, archs: tuple[str, ...]) -> None:
        with self._lock:
            names = list(archs) if archs else list(self._waiters)
            counts = {a: len(self._waiters.get(a, ())) for a in names}
        for arch, waiting in counts.items():
            if not waiting:
                continue
            try:
                queued = self._queued(arch, waiting)
            except Exception:  # a state that cannot be read: let every waiter look itself
                log.exception("counting queued %s jobs failed", arch)
                queued = waiting
            for fd in self._oldest_waiters(arch, min(queued, waiting)):
                self._take_waiter(fd, timed_out=False)

    def _oldest_waiters(self, arch: str, n: int, but: int = -1) -> list[int]:
        with self._lock:  # the first n of up to 10,000, not a copy of them all
            return list(itertools.islice((fd for fd in self._waiters.get(arch, ()) if fd != but), n))

    def found_nothing(self, conn: Parked, wait: WaitForWork) -> None:
        """A woken waiter's lease found nothing (another took the job, or a retry keeps
        away from it): it waits again, and if work is still queued, the next waiter of its
        arch looks instead."""
        self.wait_for_work(conn, dataclasses.replace(wait, hops=wait.hops + 1))
        try:
            queued = self._queued(wait.arch, 1) if wait.hops < MAX_HOPS else 0
        except Exception:  # the deadline answers it anyway
            log.exception("counting queued %s jobs failed", wait.arch)
            queued = 0
        if queued > 0:
            for fd in self._oldest_waiters(wait.arch, 1, but=conn.fileno()):
                self._take_waiter(fd, timed_out=False)

    # --- the epoll thread ---------------------------------------------------------------

    def _loop(self) -> None:
        next_sweep = time.monotonic() + 1.0
        while not self._closing.is_set():
            try:
                events = self._epoll.poll(TICK)
            except OSError:
                if self._closing.is_set():
                    return
                raise
            for fd, _ in events:
                self._readable(fd)
            now = time.monotonic()
            self._expire_waits(now)
            if now >= next_sweep:
                next_sweep = now + 1.0
                self._close_idle(now)

    def _readable(self, fd: int) -> None:
        """A frame, EOF or an error on a parked connection: a worker reads it."""
        with self._lock:
            entry = self._entries.get(fd)
            if entry is None or entry.state == _State.BUSY:
                return
            self._unwait(fd, entry)
            entry.state = _State.BUSY
            conn = entry.conn
        self._submit(fd, conn, conn.serve_one)

    def _expire_waits(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._deadlines or self._deadlines[0][0] > now:
                    return
                deadline, _, fd = heapq.heappop(self._deadlines)
                entry = self._entries.get(fd)
                current = entry is not None and entry.state == _State.WAITING and entry.wait is not None \
                    and entry.wait.deadline == deadline
            if current:
                self._take_waiter(fd, timed_out=True)

    def _take_waiter(self, fd: int, timed_out: bool) -> None:
        with self._lock:
            entry = self._entries.get(fd)
            if entry is None or entry.state != _State.WAITING or entry.wait is None:
                return
            wait = entry.wait
            self._unwait(fd, entry)
            entry.state = _State.BUSY
            conn = entry.conn
        # Still armed for reading: if the peer speaks now, _readable finds it BUSY and
        # leaves it; the next park re-arms it and the frame is read then.
        self._submit(fd, conn, lambda: conn.lease_again(wait, timed_out))

    def _unwait(self, fd: int, entry: _Entry) -> None:
        if entry.wait is not None:
            self._waiters.get(entry.wait.arch, OrderedDict()).pop(fd, None)
            entry.wait = None

    def _close_idle(self, now: float) -> None:
        with self._lock:
            idle = [(fd, e.conn) for fd, e in self._entries.items()
                    if e.state == _State.IDLE and now - e.since > self.idle_timeout]
            for fd, _ in idle:
                self._entries[fd].state = _State.BUSY
        for fd, conn in idle:
            self._submit(fd, conn, conn.close_idle)

    # --- running and closing ---------------------------------------------------------------

    def _submit(self, fd: int, conn: Parked, work: Callable[[], None]) -> None:
        try:
            self._pool.submit(self._run, fd, conn, work)
        except RuntimeError:  # the pool is shut down: the dispatcher stops
            self._close(fd, conn)

    def _run(self, fd: int, conn: Parked, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # the handler turns errors into replies; this is a last guard
            log.exception("internal error serving a connection; closed")
            self._close(fd, conn)

    def forget(self, conn: Parked) -> None:
        """The handler closed it: no longer ours (called before its socket closes)."""
        fd = conn.fileno()
        with self._lock:
            entry = self._entries.get(fd)
            if entry is None or entry.conn is not conn:
                return
            self._unwait(fd, entry)
            del self._entries[fd]
            try:
                self._epoll.unregister(fd)
            except (FileNotFoundError, ValueError, OSError):
                pass

    def _close(self, fd: int, conn: Parked) -> None:
        conn.close()  # which calls forget

    def speaking(self, conn: Parked) -> bool:
        """Whether the peer has said something not answered yet: a request in a thread's
        hands or waiting for one, or bytes unread in the socket. However long the line is,
        that peer is alive."""
        fd = conn.fileno()
        with self._lock:
            entry = self._entries.get(fd)
            if entry is None or entry.conn is not conn:
                return False
            if entry.state == _State.BUSY:
                return True
        try:
            unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return False
        return unread > 0 or conn.has_buffered()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._entries)

    def close(self) -> None:
        """Close every parked connection and stop; busy ones close when their request ends."""
        self._closing.set()
        self._thread.join(timeout=2)
        with self._lock:
            parked = [(fd, e.conn) for fd, e in self._entries.items() if e.state != _State.BUSY]
        for fd, conn in parked:
            self._close(fd, conn)
        # Requests already queued still run: each sees the dispatcher stopping and closes.
        self._pool.shutdown(wait=False)
        self._epoll.close()
