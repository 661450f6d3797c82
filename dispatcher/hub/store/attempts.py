"""The attempts table: the earlier, failed attempts of jobs that retry_failed ran again."""

from __future__ import annotations

import sqlite3
from typing import Iterable, Optional

from dispatcher.common.states import Status
from dispatcher.hub.store.database import Database
from dispatcher.hub.store.rows import JobRow, attempt_from_row
from dispatcher.results.record import Attempt


class Attempts:
    def __init__(self, db: Database) -> None:
        self._read = db.read

    def add(self, db: sqlite3.Connection, job: JobRow, status: Status, exit_code: Optional[int], started_at: float,
            finished_at: float, reason: str, log: bytes, outcomes: Optional[bytes] = None) -> None:
        """Inside the caller's transaction: keep the attempt that just ended, with its log
        and its tests' outcomes (JUnit.to_bytes; None without JUnit)."""
        db.execute("INSERT INTO attempts (job_id, attempt, runner, status, exit_code, started_at, "
                   "finished_at, reason, log, outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (job_id, attempt) DO UPDATE SET runner = excluded.runner, status = excluded.status, "
                   "exit_code = excluded.exit_code, started_at = excluded.started_at, "
                   "finished_at = excluded.finished_at, reason = excluded.reason, log = excluded.log, "
                   "outcomes = excluded.outcomes",
                   (job.id, job.attempt, job.runner or "", status.value, exit_code, started_at, finished_at,
                    reason, log, outcomes))

    def of(self, job_id: int) -> tuple[Attempt, ...]:
        """A job's earlier attempts, oldest first (their logs only until it is published)."""
        with self._read() as db:
            rows = db.execute("SELECT attempt, runner, status, exit_code, started_at, finished_at, reason, log "
                              "FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        return tuple(attempt_from_row(r) for r in rows)

    def drop_logs(self, db: sqlite3.Connection, job_ids: Iterable[int]) -> None:
        """Inside the caller's transaction: the logs are in test_results/ now."""
        db.executemany("UPDATE attempts SET log = NULL WHERE job_id = ?", [(job_id,) for job_id in job_ids])
