"""The state database: one SQLite connection, its lock, transactions and migrations.

The components (jobs.py, commits.py, attempts.py, runners.py, hook_runs.py: the rules'
writes; queries.py: the views' reads) all work over one Database, composed in
__init__.py; none opens a connection of its own. Rows come back as sqlite3.Row and are
mapped by column name (rows.py).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from dispatcher.common.errors import StateError

SCHEMA_VERSION = 10

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
    # The result's test counts and failing tests, parsed once when it is recorded, so that
    # every view renders from the state and none reads a result file back; "published"
    # (files written) becomes a job state of its own.
    3: """
ALTER TABLE jobs ADD COLUMN tests TEXT;
ALTER TABLE jobs ADD COLUMN failed_tests TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN outcomes BLOB;
UPDATE jobs SET state = 'recorded' WHERE state = 'finished';
UPDATE jobs SET state = 'published' WHERE state = 'done';
""",
    # Hooks are recorded in the transaction that marks their result published, and run
    # at least once across restarts; the id lets a hook recognise a repeat.
    4: """
CREATE TABLE IF NOT EXISTS hook_runs (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    command TEXT NOT NULL,
    timeout REAL NOT NULL,
    env TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    exit_code INTEGER,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS hook_runs_pending ON hook_runs (state, id);
""",
    # Hand-backs are counted: a job handed back again and again ends as error.
    5: """
ALTER TABLE jobs ADD COLUMN handbacks INTEGER NOT NULL DEFAULT 0;
""",
    # Where an emulated job ran includes the qemu-user and the root (its packages) that ran it.
    6: """
ALTER TABLE runners ADD COLUMN qemu TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN root TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN runner_qemu TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN runner_root TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN rerun_by TEXT NOT NULL DEFAULT '';
""",
    # Every branch a commit was seen on (branch stays the first): a JSON list.
    7: """
ALTER TABLE commits ADD COLUMN branches TEXT NOT NULL DEFAULT '[]';
UPDATE commits SET branches = json_array(branch) WHERE branch != '';
""",
    # The commit that broke a test: each commit's first parent (from the observer), the
    # head of each branch, and the outcomes of a job's earlier attempts (a test that both
    # failed and passed on one commit is flaky).
    8: """
ALTER TABLE commits ADD COLUMN parent TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS commits_parent ON commits (repo, parent);
ALTER TABLE attempts ADD COLUMN outcomes BLOB;
CREATE TABLE IF NOT EXISTS branch_heads (
    repo TEXT NOT NULL,
    branch TEXT NOT NULL,
    sha TEXT NOT NULL,
    moved_at REAL NOT NULL,
    PRIMARY KEY (repo, branch)
);
INSERT OR REPLACE INTO branch_heads (repo, branch, sha, moved_at)
    SELECT repo, branch, sha, received_at FROM commits WHERE branch != '' ORDER BY received_at, rowid;
""",
    # Each commit's position in its repository (0 = the first received), kept, so that the
    # dashboard finds a commit's page and a page's commits through an index instead of
    # counting or skipping every earlier commit (1,000,000 results: 20 ms a page).
    9: """
ALTER TABLE commits ADD COLUMN seq INTEGER;
UPDATE commits SET seq = numbered.n FROM (
    SELECT rowid AS r, row_number() OVER (PARTITION BY repo ORDER BY rowid) - 1 AS n FROM commits) AS numbered
    WHERE commits.rowid = numbered.r;
CREATE UNIQUE INDEX IF NOT EXISTS commits_seq ON commits (repo, seq);
CREATE INDEX IF NOT EXISTS commits_received ON commits (received_at);
CREATE INDEX IF NOT EXISTS commits_recent ON commits (repo, received_at);
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs (state, id);
""",
    # Several dispatchers on one state (PostgreSQL): each lease names the dispatcher that
    # keeps its heartbeat deadline, and each dispatcher says it is alive. On SQLite the
    # one dispatcher is every lease's; a restarted one adopts its former self's leases.
    10: """
ALTER TABLE jobs ADD COLUMN dispatcher TEXT;
CREATE TABLE IF NOT EXISTS dispatchers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    backend INTEGER NOT NULL DEFAULT 0
);
""",
}


class Database:
    """Thread-safe: one connection behind one lock. `tx()` writes, `read()` reads.

    What differs from PostgreSQL (postgres.py) beyond the SQL both speak: rows need no
    locks (one writer, one connection), and there is no one else to wake or lead."""

    shared = False  # other dispatchers may use this state at the same time
    row_lock = ""  # appended to a SELECT of jobs that an UPDATE follows
    skip_locked = ""  # appended to the SELECT that picks the next queued job

    def serialize_repo(self, db: sqlite3.Connection, repo: str) -> None:
        """Inside a transaction: none other may number this repository's commits."""

    def notify(self, archs: tuple[str, ...]) -> None:
        """Tell the other dispatchers on this state that work for `archs` is queued."""

    def announce(self, commits: list[tuple[str, str, str]]) -> None:
        """Tell the publishing dispatcher which commits' pages or files to rewrite."""

    def listen(self, on_work, on_commits) -> None:
        """Call `on_work(archs)` when another dispatcher queues work, `on_commits` when it
        announces commits."""

    def leader(self) -> bool:
        """Whether this dispatcher publishes results and runs hooks (the one of several)."""
        return True

    def session(self) -> int:
        """This dispatcher's session on the server (PostgreSQL's backend pid), 0 here."""
        return 0

    def leader_session(self) -> int:
        """The session holding the leader's lock, 0 when none (always, here)."""
        return 0

    def end_session(self, session: int) -> None:
        """End another dispatcher's session (PostgreSQL); nothing to end here."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        try:
            if readonly:
                if not self.path.exists():
                    raise StateError(f"{self.path}: no state database (has the dispatcher run with this config?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
                self._db.row_factory = sqlite3.Row
                self._db.execute("PRAGMA query_only = 1")
                self._check_schema()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                           timeout=30)
                self._db.row_factory = sqlite3.Row
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
        with self.lock:
            self._db.close()

    def tx(self) -> "_Transaction":
        """BEGIN IMMEDIATE ... COMMIT, under the lock."""
        return _Transaction(self._db, self.lock, self.path)

    def read(self) -> "_Read":
        """The connection, under the lock, for queries outside a transaction."""
        return _Read(self._db, self.lock)


class _Read:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        return self.db

    def __exit__(self, *exc) -> None:
        self.lock.release()


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
