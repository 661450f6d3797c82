"""The hub's periodic work, every SERVICE_INTERVAL on the serve loop: expire leases, wake
the publisher for results a crash or a full disk left unwritten, flush who was heard,
and, with other dispatchers on the state, say this one lives and adopt the leases of
those that died.

Time this dispatcher could not judge fairly is given back to the leases before any is
judged: a stall of the process itself (SIGSTOP, a paused VM), and a spell when the state
did not answer (PostgreSQL restarting), when the runners could not reach it through us
either.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

from dispatcher.common.errors import PolyarchError, StateError, StateUnavailable
from dispatcher.hub.presence import FLUSH_INTERVAL

if TYPE_CHECKING:
    from dispatcher.hub.service import Hub

log = logging.getLogger("polyarch.dispatcher")

SERVICE_INTERVAL = 0.2
STALL = 2.0  # seconds between two ticks (normally 0.2) that mean we were stopped
BEAT_INTERVAL = 1.0  # at most; a quarter of heartbeat_timeout when that is shorter


class Upkeep:
    def __init__(self, hub: "Hub") -> None:
        self.hub = hub
        self._next_service = 0.0
        self._last_tick = 0.0
        self._next_flush = 0.0
        self._next_beat = 0.0
        self._beat_every = min(BEAT_INTERVAL, hub.store.policy.heartbeat_timeout / 4)
        self._last_error = ""
        self._state_lost_at: Optional[float] = None  # monotonic: when the state stopped answering

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next_service:
            return
        stalled = now - self._last_tick if self._last_tick else 0.0
        self._last_tick = now
        self._next_service = now + SERVICE_INTERVAL
        store = self.hub.store
        if stalled > STALL:
            # The runners' heartbeats of that time wait unread in their sockets.
            log.warning("the dispatcher was stalled for %.1f s; lease deadlines moved as far", stalled)
            store.jobs.extend_leases(stalled)
        try:
            unpublished = store.jobs.has_unpublished()  # and the state answers again
            if self._state_lost_at is not None:
                log.warning("the state was unreachable for %.1f s; lease deadlines moved as far",
                            now - self._state_lost_at)
                store.jobs.extend_leases(now - self._state_lost_at)
                self._state_lost_at = None
            if store.db.shared and now >= self._next_beat:
                self._next_beat = now + self._beat_every
                self._beat()
            self._expire()
            if unpublished:
                self.hub.publisher.wake()
            if now >= self._next_flush:
                self._next_flush = now + FLUSH_INTERVAL
                self._flush()
            if self._last_error:
                log.info("periodic work succeeds again")
                self._last_error = ""
        except PolyarchError as exc:
            if isinstance(exc, StateUnavailable) and self._state_lost_at is None:
                self._state_lost_at = now
            # Every 0.2 s while a disk is full: say it once, then again only if it changes.
            if str(exc) != self._last_error:
                log.error("periodic work failed: %s", exc)
            self._last_error = str(exc)
        except Exception:  # the serve loop must survive anything here
            log.exception("periodic work failed")

    def _beat(self) -> None:
        """Say this dispatcher lives; keep the leases no live dispatcher keeps."""
        store = self.hub.store
        store.peers.beat()
        adopted = store.jobs.adopt_orphans(store.peers.alive())
        if adopted:
            log.warning("adopted %d lease(s) of a dispatcher that stopped beating; their runners have "
                        "heartbeat_timeout to come back", adopted)

    def _expire(self) -> None:
        hub = self.hub
        expired = hub.store.jobs.expire(heard=hub._last_heard)
        for e in expired:
            what = "re-queued" if e.requeued else "given up (status error)"
            log.warning("lease of %s %s %s expired: runner %s sent no heartbeat for %.0f s; job %s",
                        e.job.repo, e.job.sha[:12], e.job.arch, e.job.runner, hub.store.policy.heartbeat_timeout,
                        what)
        if expired:
            hub.metrics.expired(len(expired))
            hub.notify_work(*{e.job.arch for e in expired})
            hub.publisher.touch((e.job.repo, e.job.sha) for e in expired)

    def _flush(self) -> None:
        hub = self.hub
        hub.live.sweep(hub.store.jobs.current)
        seen = hub.presence.take_seen()
        try:
            hub.store.runners.touch(seen)
        except StateError:
            hub.presence.put_back(seen)
            raise
