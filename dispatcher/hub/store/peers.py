"""The dispatchers table: each dispatcher on this state, and when it last said it lives.

A dispatcher registers under a new id at each start and beats every second; one whose
beat is older than heartbeat_timeout is dead, and the leases it kept are adopted by a
live one (jobs.py), which gives them a fresh heartbeat period: runners that moved to
another dispatcher adopted theirs already by heartbeating there. On SQLite there is one
dispatcher, and a restarted one finds its former self dead.

The beats use each host's wall clock: the dispatcher hosts' clocks must agree (NTP) to
well within heartbeat_timeout.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from dispatcher.hub.store.database import Database

log = logging.getLogger("polyarch.dispatcher")

STALE_ROWS = 86400.0  # a dead dispatcher's row is dropped after a day


def new_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{secrets.token_hex(3)}"


class Peers:
    def __init__(self, db: Database, me: str, timeout: float) -> None:
        self.db, self.me, self.timeout = db, me, timeout

    def register(self) -> None:
        now = time.time()
        with self.db.tx() as db:
            db.execute("DELETE FROM dispatchers WHERE last_seen < ?", (now - STALE_ROWS,))
            db.execute("INSERT INTO dispatchers (id, host, pid, started_at, last_seen, backend) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (self.me, socket.gethostname(), os.getpid(), now, now,
                                                    self.db.session()))

    def beat(self) -> None:
        session = self.db.session()  # it changes when the connection is made again
        with self.db.tx() as db:
            db.execute("UPDATE dispatchers SET last_seen = ?, backend = ? WHERE id = ?",
                       (time.time(), session, self.me))

    def lead(self) -> bool:
        """Whether this dispatcher publishes results and runs hooks now. The one that did
        holds the state's leader lock until its session ends: when it dies, at once;
        when it hangs (SIGSTOP, a frozen VM) its session stays open, so a live dispatcher
        that finds the lock held by a dispatcher that stopped beating ends that session
        and takes over. The hung one finds its connection gone when it wakes, and with it
        the lead."""
        if self.db.leader():
            return True
        holder = self.db.leader_session()
        if not holder:
            return False
        with self.db.read() as db:
            stale = db.execute("SELECT id FROM dispatchers WHERE backend = ? AND last_seen < ?",
                               (holder, time.time() - self.timeout)).fetchone()
        if stale is None:
            return False  # a live one leads (or one whose new session has not beaten yet)
        log.warning("dispatcher %s holds the lead but stopped beating; ending its session %d", stale[0], holder)
        self.db.end_session(holder)
        return self.db.leader()

    def leave(self) -> None:
        """A clean stop: the others adopt this one's leases at their next look, without
        waiting heartbeat_timeout for it to be dead."""
        with self.db.tx() as db:
            db.execute("DELETE FROM dispatchers WHERE id = ?", (self.me,))

    def alive(self) -> list[str]:
        """The ids of the dispatchers that beat within heartbeat_timeout, this one first."""
        with self.db.read() as db:
            rows = db.execute("SELECT id FROM dispatchers WHERE last_seen >= ? ORDER BY started_at",
                              (time.time() - self.timeout,)).fetchall()
        return [self.me] + [r[0] for r in rows if r[0] != self.me]
