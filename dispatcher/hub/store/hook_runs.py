"""The hook_runs table: every hook an event owes, until it has run once.

A hook is recorded in the transaction that queues its jobs or marks its result
published, so a crash can neither lose it nor run it for a result whose files are not there; a hook that had not
finished when the dispatcher stopped runs again at the next start (at least once: its
POLYARCH_HOOK_ID lets it tell a repeat).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Iterable, Optional

from dispatcher.hub.store.database import Database


@dataclasses.dataclass(frozen=True)
class HookRun:
    id: int
    event: str  # on_queued, on_result, on_failure or on_commit_done
    command: str
    timeout: float
    env: dict[str, str]  # the event's fields, as the hook's environment

    @property
    def commit(self) -> tuple[str, str]:
        """(repo, commit) the hook is about: the hooks of one commit run in order."""
        return self.env.get("POLYARCH_REPO", ""), self.env.get("POLYARCH_COMMIT", "")


# A hook owed, as it is recorded: (event, command, timeout, env).
Owed = tuple[str, str, float, dict[str, str]]


class HookRuns:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, db: sqlite3.Connection, job_id: int, runs: Iterable[Owed]) -> None:
        """Inside the caller's transaction: (event, command, timeout, env) owed for a job
        (for a commit's event: one of its jobs)."""
        now = time.time()
        db.executemany("INSERT INTO hook_runs (job_id, event, command, timeout, env, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(job_id, event, command, timeout, json.dumps(env), now) for event, command, timeout, env in runs])

    def pending(self, after: int = 0, limit: int = 1000) -> list[HookRun]:
        """Hooks not run yet, oldest first, with ids above `after`."""
        with self.db.read() as db:
            rows = db.execute("SELECT id, event, command, timeout, env FROM hook_runs WHERE state = 'pending' "
                              "AND id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        return [HookRun(r["id"], r["event"], r["command"], r["timeout"], json.loads(r["env"])) for r in rows]

    def done(self, hook_id: int, exit_code: Optional[int]) -> None:
        """It ran (whatever its outcome: a failing hook is logged, not retried)."""
        with self.db.tx() as db:
            db.execute("UPDATE hook_runs SET state = 'done', exit_code = ?, finished_at = ? WHERE id = ?",
                       (exit_code, time.time(), hook_id))
