"""Live leases in memory: each one's heartbeat deadline and holder.

Deadlines change every few seconds per runner and are worthless after a restart (every
lease then gets a fresh one), so they are never written to the database. They have a
lock of their own: a heartbeat touches nothing else, and with 10,000 runners beating it
must not queue behind a transaction or the publisher's reads on the database's lock.
Lock order: the database's lock, then this one; never the other way round.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional


class Leases:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}  # lease id -> monotonic deadline
        # lease id -> the runner holding it: a heartbeat, result or release for a lease
        # counts only from its holder (any runner can name any lease id it has seen).
        self._holders: dict[str, str] = {}
        self._of: dict[str, set[str]] = {}  # runner -> its lease ids (one, normally)

    def hold(self, lease_id: str, runner: str, deadline: float) -> None:
        with self._lock:
            self._deadlines[lease_id] = deadline
            self._holders[lease_id] = runner
            self._of.setdefault(runner, set()).add(lease_id)

    def forget(self, lease_id: str) -> None:
        with self._lock:
            self._deadlines.pop(lease_id, None)
            runner = self._holders.pop(lease_id, None)
            held = self._of.get(runner) if runner is not None else None
            if held is not None:
                held.discard(lease_id)
                if not held:
                    del self._of[runner]

    def current(self, lease_id: str, runner: Optional[str] = None) -> bool:
        """Whether `lease_id` is live and held by `runner` (None: by anyone)."""
        with self._lock:
            return self._current(lease_id, runner)

    def _current(self, lease_id: str, runner: Optional[str]) -> bool:
        return lease_id in self._deadlines and (runner is None or self._holders.get(lease_id) == runner)

    def extend(self, lease_id: str, runner: Optional[str], deadline: float) -> bool:
        """Move a live lease's deadline to `deadline`; False when it is not live or not
        `runner`'s. One step under the lock: a lease forgotten meanwhile stays forgotten."""
        with self._lock:
            if not self._current(lease_id, runner):
                return False
            self._deadlines[lease_id] = deadline
            return True

    def retain(self, holders: dict[str, str], seconds: float, fresh: float) -> None:
        """Exactly these leases (id -> runner): those kept already move `seconds` later,
        the others get the deadline `fresh`."""
        with self._lock:
            old = self._deadlines
            self._deadlines = {k: old[k] + seconds if k in old else fresh for k in holders}
            self._holders = dict(holders)
            self._of = {}
            for lease_id, runner in holders.items():
                self._of.setdefault(runner, set()).add(lease_id)

    def shift(self, seconds: float) -> None:
        """Every deadline `seconds` later."""
        with self._lock:
            for lease_id in self._deadlines:
                self._deadlines[lease_id] += seconds

    def held_by(self, runner: str) -> list[str]:
        # Every lease asks this of its runner: an index, not a scan of 10,000 leases.
        with self._lock:
            return sorted(self._of.get(runner, ()))

    def late(self, now: float, silent_for: Optional[Callable[[str], float]] = None,
             timeout: float = 0.0) -> list[str]:
        """Leases past their deadline at `now`. With `silent_for(runner)` (seconds since the
        runner was last heard), one whose runner spoke within `timeout` is not late: its
        deadline moves to `timeout` after that. `silent_for` is called outside the lock
        (it asks the connections' side, which has locks of its own)."""
        with self._lock:
            late = [(k, self._holders.get(k, "")) for k, d in self._deadlines.items() if d < now]
        if silent_for is None:
            return [k for k, _ in late]
        out = []
        for lease_id, runner in late:
            silent = silent_for(runner)
            if silent < timeout:
                self.extend(lease_id, None, now + timeout - silent)
            else:
                out.append(lease_id)
        return out
