"""Which runners are connected right now, and when each was last heard from.

Kept in memory by the dispatcher (a connection is a live fact, worthless after a
restart) and copied to the runners table every few seconds so that `status`, running
in another process, can show each runner's last heartbeat without a write per heartbeat.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from dispatcher.hub.store import RunnerRow

FLUSH_INTERVAL = 2.0


class Presence:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, int] = {}  # name -> open connections registered under it
        self._rows: dict[str, RunnerRow] = {}
        self._per_arch: dict[str, int] = {}  # arch -> runners of it in _rows
        self._seen: dict[str, float] = {}
        self._dirty: dict[str, float] = {}
        self._arch_seen: dict[str, float] = {}  # arch -> last contact with any runner of it
        self._started = time.time()  # runners need a moment to come back after a restart

    def arrived(self, runner: RunnerRow) -> None:
        with self._lock:
            self._connections[runner.name] = self._connections.get(runner.name, 0) + 1
            old = self._rows.get(runner.name)
            if old is not None:
                self._uncount(old.arch)
            self._rows[runner.name] = runner
            self._per_arch[runner.arch] = self._per_arch.get(runner.arch, 0) + 1
            self._seen[runner.name] = time.time()
            self._arch_seen[runner.arch] = time.time()

    def connected_elsewhere(self, name: str, host: str) -> Optional[str]:
        """The host of a connection registered as `name` from another host, if one is
        open. From the same host, a new connection is the same runner reconnecting (its
        old one may not have closed yet); two processes on one host under one name are
        kept apart by the runner's own lock on its work folder."""
        with self._lock:
            row = self._rows.get(name)
            return row.host if row is not None and row.host != host else None

    def heard(self, name: str) -> None:
        now = time.time()
        with self._lock:
            if name in self._seen:
                self._seen[name] = now

    def left(self, name: str) -> None:
        with self._lock:
            left = self._connections.get(name, 0) - 1
            if left > 0:
                self._connections[name] = left
                return
            self._connections.pop(name, None)
            row = self._rows.pop(name, None)
            if row is not None:
                self._uncount(row.arch)
            if name in self._seen:
                self._dirty[name] = self._seen.pop(name)

    def _uncount(self, arch: str) -> None:
        left = self._per_arch.get(arch, 0) - 1
        if left > 0:
            self._per_arch[arch] = left
        else:
            self._per_arch.pop(arch, None)

    def last_heard(self, name: str) -> float:
        """When a connected runner was last heard from (wall clock); 0 when not connected."""
        with self._lock:
            return self._seen.get(name, 0.0)

    def connected(self) -> set[str]:
        with self._lock:
            return set(self._rows)

    def unattended(self, arch: str, timeout: float) -> bool:
        """No runner of `arch` connected, nor seen for `timeout` seconds (counted from this
        dispatcher's start at the earliest)."""
        now = time.time()
        with self._lock:
            if self._per_arch.get(arch):
                self._arch_seen[arch] = now
                return False
            return now - self._arch_seen.get(arch, self._started) > timeout

    def others(self, arch: str, name: str) -> bool:
        """Whether another runner of `arch` than `name` is connected."""
        # Asked on every lease: counts per arch, not a scan of 10,000 runners.
        with self._lock:
            row = self._rows.get(name)
            return self._per_arch.get(arch, 0) - (1 if row is not None and row.arch == arch else 0) > 0

    def count_by_arch(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_arch)

    def take_seen(self) -> dict[str, float]:
        """name -> when last seen, to write to the store: now for every connected runner
        (an idle one only speaks every long-poll, up to 30 s, yet is there), and the
        last contact of those that left since the previous call."""
        now = time.time()
        with self._lock:
            seen, self._dirty = self._dirty, {}
            seen.update((name, now) for name in self._rows)
            return seen

    def put_back(self, seen: dict[str, float]) -> None:
        """A write of `take_seen`'s answer failed: keep it for the next flush."""
        with self._lock:
            for name, t in seen.items():
                self._dirty[name] = max(t, self._dirty.get(name, 0.0))
