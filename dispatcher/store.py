"""The dispatcher's durable state: SQLite in WAL mode, one writer connection.

Jobs move queued -> leased -> finished -> done. `finished` means the result is
committed to the database; `done` means its files are in test_results/ too. Splitting
the two lets the dispatcher acknowledge a result the moment it is durable and write the
files again after a crash or a full disk, from the database, without ever running the
job twice.

Heartbeat deadlines live in memory: they change every few seconds per runner and are
worthless after a restart, when every lease simply gets a fresh deadline.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Optional

from .errors import StateError
from .protocol import CommitInfo, Status
from .queries import Queries
from .rows import (_JOB_COLUMNS, _JOB_FROM, _RUNNER_COLUMNS, AttemptRow, Expired, FinishedJob, JobRow,  # noqa: F401
                   JobState, RunnerRow, _job)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    branch TEXT NOT NULL,
    author TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    timestamp INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    PRIMARY KEY (repo, sha)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    arch TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    runner TEXT,
    runner_host TEXT NOT NULL DEFAULT '',
    runner_machine TEXT NOT NULL DEFAULT '',
    runner_emulated INTEGER NOT NULL DEFAULT 0,
    runner_kernel TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    leased_at REAL,
    status TEXT,
    exit_code INTEGER,
    started_at REAL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    log BLOB,
    log_truncated INTEGER NOT NULL DEFAULT 0,
    junit BLOB,
    UNIQUE (repo, sha, arch)
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, arch, id);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_id);
CREATE TABLE IF NOT EXISTS runners (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    host TEXT NOT NULL,
    machine TEXT NOT NULL,
    version TEXT NOT NULL,
    emulated INTEGER NOT NULL DEFAULT 0,
    kernel TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
"""

# Each step takes the database from version N-1 to N, in one transaction.
_MIGRATIONS = {
    # retry_failed: a failed attempt is kept (with its log) and the job runs again,
    # preferably on another runner than the one it failed on.
    2: """
ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN avoid_runner TEXT;
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    runner TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started_at REAL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    log BLOB,
    PRIMARY KEY (job_id, attempt)
);
""",
}


class Store(Queries):
    """All writes live here, the reads for views in queries.py. Thread-safe: one
    connection behind one lock."""

    def __init__(self, path: Path, readonly: bool = False, lease_grace: float = 10.0) -> None:
        self.path = Path(path)
        self.lease_grace = lease_grace
        self._lock = threading.RLock()
        self._deadlines: dict[str, float] = {}
        try:
            if readonly:
                if not self.path.exists():
                    raise StateError(f"{self.path}: no state database (has the dispatcher run with this config?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA query_only = 1")
                self._check_schema()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                           timeout=30)
                self._open_writer()
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path}: unreadable state database ({exc}); restore it from a backup, or move "
                "it aside to start empty (every queued commit would then be forgotten)") from None

    def _open_writer(self) -> None:
        db = self._db
        # FULL, not NORMAL: an acknowledged commit must survive a power cut in WAL mode.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        self._check_size()
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.executescript(_SCHEMA)
            db.execute("PRAGMA user_version = 1")
            version = 1
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this polyarch "
                                        f"({SCHEMA_VERSION}); run the newer polyarch")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            db.executescript(f"BEGIN IMMEDIATE;\n{_MIGRATIONS[step]}\nPRAGMA user_version = {step};\nCOMMIT;")
        self._check_schema()
        now = time.time()
        # Leases survive a restart; their runners get a full heartbeat period to come back.
        for (lease_id,) in db.execute("SELECT lease_id FROM jobs WHERE state = ?", (JobState.LEASED.value,)):
            self._deadlines[lease_id] = now + self.lease_grace

    def _check_size(self) -> None:
        """A file cut short loses whole pages that quick_check may never visit: compare
        the page count its header promises with what is on disk."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
        except IsADirectoryError:
            raise sqlite3.DatabaseError("it is a directory, not a database file") from None
        if len(header) < 100:
            return  # new or empty: SQLite writes the header with the first page
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return  # a checkpoint cut short by a crash: the WAL still holds the pages, SQLite redoes it
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        counter, valid_for = header[24:28], header[92:96]
        # The header's page count is only authoritative when these two match (SQLite's rule).
        if pages and counter == valid_for and self.path.stat().st_size < pages * page_size:
            raise sqlite3.DatabaseError(f"file is shorter than its header says ({self.path.stat().st_size} bytes, "
                                        f"{pages} pages of {page_size})")

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, this polyarch expects {SCHEMA_VERSION} "
                                        "(the dispatcher upgrades it when it starts)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db, self._lock, self.path)

    # --- commits and jobs ------------------------------------------------------------

    def enqueue(self, repo: str, branch: str, commits: Iterable[CommitInfo], archs: Iterable[str]) -> int:
        """Record commits and one job per arch; returns how many jobs are new. Idempotent."""
        now = time.time()
        archs = list(archs)
        created = 0
        with self._tx() as db:
            for c in commits:
                db.execute("INSERT OR IGNORE INTO commits (repo, sha, branch, author, subject, timestamp, "
                           "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (repo, c.sha, branch, c.author, c.subject, c.timestamp, now))
                for arch in archs:
                    cur = db.execute("INSERT OR IGNORE INTO jobs (repo, sha, arch, state, created_at) "
                                     "VALUES (?, ?, ?, ?, ?)", (repo, c.sha, arch, JobState.QUEUED.value, now))
                    created += cur.rowcount
        return created

    def claim(self, runner: RunnerRow, heartbeat_timeout: float, alone: bool = True) -> Optional[JobRow]:
        """Lease the oldest queued job of the runner's arch to it, or None.

        A job retried after failing on this runner is left for another one of the same
        arch, unless `alone` says no other is connected. The runner's host, machine and
        kernel are copied onto the job: the result must say where it ran even if that
        runner later re-registers elsewhere."""
        lease_id = secrets.token_hex(12)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = ? AND arch = ? AND (avoid_runner IS NULL "
                             "OR avoid_runner != ? OR ?) ORDER BY id LIMIT 1",
                             (JobState.QUEUED.value, runner.arch, runner.name, int(alone))).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, attempt = attempt + 1, lease_id = ?, runner = ?, leased_at = ?, "
                       "runner_host = ?, runner_machine = ?, runner_emulated = ?, runner_kernel = ? WHERE id = ?",
                       (JobState.LEASED.value, lease_id, runner.name, now, runner.host, runner.machine,
                        int(runner.emulated), runner.kernel, row[0]))
            self._deadlines[lease_id] = now + heartbeat_timeout
            return self._job_by("j.id = ?", row[0], db)

    def heartbeat(self, lease_id: str, heartbeat_timeout: float) -> bool:
        """Extend a lease; False when it is no longer current (expired or finished)."""
        with self._lock:
            if lease_id not in self._deadlines:
                return False
            self._deadlines[lease_id] = time.time() + heartbeat_timeout
            return True

    def lease_is_current(self, lease_id: str) -> bool:
        with self._lock:
            return lease_id in self._deadlines

    def expire(self, max_attempts: int, now: Optional[float] = None) -> list[Expired]:
        """Take back every lease past its deadline; requeue, or end as error after max_attempts."""
        now = time.time() if now is None else now
        out: list[Expired] = []
        with self._lock:
            late = [k for k, d in self._deadlines.items() if d < now]
            if not late:
                return out
            with self._tx() as db:
                out = self._expire(db, late, max_attempts, now)
            # Only after the commit: a failed write leaves the leases to expire next time.
            for lease_id in late:
                del self._deadlines[lease_id]
        return out

    def _expire(self, db: sqlite3.Connection, late: list[str], max_attempts: int, now: float) -> list[Expired]:
        out: list[Expired] = []
        for lease_id in late:
            job = self._job_by("j.lease_id = ? AND j.state = 'leased'", lease_id, db)
            if job is None:
                continue
            # Attempts that ended in a retried failure do not count against lost runners.
            if job.attempt - job.retries >= max_attempts:
                reason = (f"runner {job.runner} lost (no heartbeat); gave up after "
                          f"{job.attempt - job.retries} attempt(s), max_attempts = {max_attempts}")
                db.execute("UPDATE jobs SET state = ?, status = ?, reason = ?, started_at = leased_at, "
                           "finished_at = ?, log = ? WHERE id = ?",
                           (JobState.FINISHED.value, Status.ERROR.value, reason, now,
                            (reason + "\n").encode(), job.id))
                out.append(Expired(job, requeued=False))
            else:
                db.execute("UPDATE jobs SET state = ?, lease_id = NULL WHERE id = ?",
                           (JobState.QUEUED.value, job.id))
                out.append(Expired(job, requeued=True))
        return out

    def finish(self, lease_id: str, status: Status, exit_code: Optional[int], started_at: float,
               finished_at: float, log: bytes, log_truncated: bool, junit: bytes, reason: str,
               retry_failed: Mapping[str, int] = MappingProxyType({})) -> Optional[JobRow]:
        """Record the result of a current lease; None for a late or duplicate result.

        A failure (or timeout) with retries left under `retry_failed` (per repo) is kept as an
        attempt and the job queued again: the returned row is then in state QUEUED. A
        pass after such a retry is recorded as FLAKY."""
        with self._lock:
            if lease_id not in self._deadlines:
                return None
            with self._tx() as db:
                job = self._job_by("j.lease_id = ? AND j.state = 'leased'", lease_id, db)
                if job is None:
                    return None
                if status in (Status.FAILED, Status.TIMEOUT) and job.retries < retry_failed.get(job.repo, 0):
                    db.execute("INSERT OR REPLACE INTO attempts (job_id, attempt, runner, status, exit_code, "
                               "started_at, finished_at, reason, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (job.id, job.attempt, job.runner or "", status.value, exit_code, started_at,
                                finished_at, reason, log))
                    db.execute("UPDATE jobs SET state = ?, lease_id = NULL, retries = retries + 1, avoid_runner = ? "
                               "WHERE id = ?", (JobState.QUEUED.value, job.runner, job.id))
                    job = self._job_by("j.id = ?", job.id, db)
                    del self._deadlines[lease_id]
                    return job
                if status == Status.PASSED and job.retries:
                    status = Status.FLAKY
                db.execute("UPDATE jobs SET state = ?, status = ?, exit_code = ?, started_at = ?, "
                           "finished_at = ?, log = ?, log_truncated = ?, junit = ?, reason = ? WHERE id = ?",
                           (JobState.FINISHED.value, status.value, exit_code, started_at, finished_at, log,
                            int(log_truncated), junit or None, reason, job.id))
                job = self._job_by("j.id = ?", job.id, db)
            del self._deadlines[lease_id]
            return job

    def release(self, lease_id: str) -> Optional[JobRow]:
        """A runner handed a job back: requeue it without spending an attempt."""
        with self._lock:
            with self._tx() as db:
                job = self._job_by("j.lease_id = ? AND j.state = 'leased'", lease_id, db)
                if job is None:
                    return None
                db.execute("UPDATE jobs SET state = ?, lease_id = NULL, attempt = attempt - 1 WHERE id = ?",
                           (JobState.QUEUED.value, job.id))
            self._deadlines.pop(lease_id, None)
            return job

    def unpublished(self, limit: int = 100) -> list[FinishedJob]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_JOB_COLUMNS}, j.log, j.junit FROM {_JOB_FROM} "
                                    "WHERE j.state = ? ORDER BY j.id LIMIT ?",
                                    (JobState.FINISHED.value, limit)).fetchall()
            out = []
            for r in rows:
                job = _job(r[:-2])
                attempts = self._attempts(job.id) if job.retries else ()
                out.append(FinishedJob(job, r[-2] or b"", r[-1] or b"", attempts))
        return out

    def _attempts(self, job_id: int) -> tuple[AttemptRow, ...]:
        rows = self._db.execute("SELECT attempt, runner, status, exit_code, started_at, finished_at, reason, log "
                                "FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
        return tuple(AttemptRow(a, r, Status(s), e, st or 0.0, f or 0.0, reason, lg or b"")
                     for a, r, s, e, st, f, reason, lg in rows)

    def has_unpublished(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM jobs WHERE state = ? LIMIT 1",
                                    (JobState.FINISHED.value,)).fetchone() is not None

    def mark_published(self, *job_ids: int) -> None:
        """The files are written: drop the copies of log and JUnit kept for them.

        Several at once in one transaction: one fsync for a whole batch of results."""
        with self._tx() as db:
            db.executemany("UPDATE jobs SET state = ?, log = NULL, junit = NULL WHERE id = ? AND state = ?",
                           [(JobState.DONE.value, job_id, JobState.FINISHED.value) for job_id in job_ids])
            db.executemany("UPDATE attempts SET log = NULL WHERE job_id = ?", [(job_id,) for job_id in job_ids])

    def job_by_lease(self, lease_id: str) -> Optional[JobRow]:
        with self._lock:
            return self._job_by("j.lease_id = ?", lease_id, self._db)

    def _job_by(self, cond: str, value: object, db: sqlite3.Connection) -> Optional[JobRow]:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} WHERE {cond}", (value,)).fetchone()
        return _job(row) if row else None

    # --- runners -----------------------------------------------------------------------

    def register_runner(self, runner: RunnerRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO runners (name, arch, host, machine, version, emulated, kernel, first_seen, "
                       "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "arch = excluded.arch, host = excluded.host, machine = excluded.machine, "
                       "version = excluded.version, emulated = excluded.emulated, kernel = excluded.kernel, "
                       "last_seen = excluded.last_seen",
                       (runner.name, runner.arch, runner.host, runner.machine, runner.version,
                        int(runner.emulated), runner.kernel, runner.first_seen, runner.last_seen))

    def touch_runners(self, seen: dict[str, float]) -> None:
        """Record when connected runners were last heard from, for `status` in other processes."""
        if seen:
            with self._tx() as db:
                db.executemany("UPDATE runners SET last_seen = max(last_seen, ?) WHERE name = ?",
                               [(t, name) for name, t in seen.items()])

class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; rolls back on any error.

    A failed write (disk full, I/O error) becomes a StateError naming the file: the
    request that caused it is refused, and nothing half-written is ever committed."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: Path) -> None:
        self.db, self.lock, self.path = db, lock, path

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.lock.release()
            raise StateError(f"{self.path}: cannot write the state database: {exc}") from None
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as error:
                    self._rollback()
                    raise StateError(f"{self.path}: cannot write the state database: {error}") from None
            else:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"{self.path}: cannot write the state database: {exc}") from None
        finally:
            self.lock.release()

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back on its own (it does on a full disk)
