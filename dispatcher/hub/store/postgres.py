"""The state on PostgreSQL (`dispatcher.state = "postgresql://..."`), through psycopg 3.

The same tables and the same SQL as on SQLite (database.py): the components write the
subset both engines speak (ON CONFLICT, RETURNING, CASE instead of two-argument max),
and this module only changes what is spelled differently: `?` parameters become
psycopg's, and rows answer by column name and by position as sqlite3.Row does. The
commits table keeps a `rowid` column of its own (an identity), since the HTTP API's ids
and the history's order are SQLite's rowid.

One connection behind one lock, as on SQLite: this process's writes are serialized by
the lock and committed by PostgreSQL before a method returns. Several dispatchers may
share one database, all active: rows another one may change at the same moment are
locked (`FOR UPDATE`; the next queued job `FOR UPDATE SKIP LOCKED`, so two dispatchers
never lease one job and never wait for each other), work queued by one wakes the
others' waiting runners (NOTIFY, on a connection of its own that LISTENs), and one of
them at a time, the holder of an advisory lock, publishes result files and runs hooks
(the others announce what their work made stale to it, NOTIFY again). A lost connection
(the server restarted) turns the request into StateError, which the hub answers as
`unavailable`; the next request connects again. The schema is pgschema.py's.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Iterable, Iterator, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from dispatcher.common.errors import StateError, StateUnavailable
from dispatcher.hub.store.database import SCHEMA_VERSION
from dispatcher.hub.store.pgschema import FIRST, MIGRATIONS, SCHEMA

INSTALL = "pip install 'polyarch[postgresql]' (psycopg) and Debian's libpq5"

_LEADER = 7341_0001  # the advisory lock of the dispatcher that publishes and runs hooks
_SERIALIZE = 7341_0002  # with a repository's hash: who numbers its commits now
CHANNEL = "polyarch_work"
# Commits whose pages or result files another dispatcher's work made stale ("touch":
# work started; "rebranched": seen on another branch), for the one that publishes.
COMMITS_CHANNEL = "polyarch_commits"
NOTIFY_MOST = 7000  # bytes of one NOTIFY payload (PostgreSQL refuses 8000 and more)

# Tables in the order a copy fills them, and the identity columns to move on after it.
TABLES = ("commits", "jobs", "runners", "attempts", "hook_runs", "branch_heads")
IDENTITIES = (("commits", "rowid"), ("jobs", "id"), ("hook_runs", "id"))


def is_url(state: str) -> bool:
    return state.startswith(("postgresql://", "postgres://"))


def shown(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@functools.lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    # Only module constants and ? placeholders reach here (no literal ? or % in values).
    return sql.replace("%", "%%").replace("?", "%s")


class Row:
    """A row by column name and by position, as sqlite3.Row."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values, self._index = values, index

    def __getitem__(self, key: Any) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: Any):
    description = cursor.description
    index = {column.name: i for i, column in enumerate(description or ())}
    return lambda values: Row(values, index)


class Connection:
    """What the components get from tx() and read(): execute and executemany with
    SQLite's `?` parameters, returning the cursor."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_translate(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cursor = self._conn.cursor()
        cursor.executemany(_translate(sql), [tuple(r) for r in rows])
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != 0  # psycopg.pq.TransactionStatus.IDLE


class PgDatabase:
    """Thread-safe: one connection behind one lock. `tx()` writes, `read()` reads."""

    def __init__(self, url: str, readonly: bool = False) -> None:
        try:
            import psycopg
        except ImportError:
            raise StateError(f"state {shown(url)}: psycopg is not installed; {INSTALL}") from None
        self._psycopg = psycopg
        self.url = url
        self.path = shown(url)
        self.readonly = readonly
        self.lock = threading.RLock()
        self._conn: Optional[Any] = None
        self._leading = False
        self._closed = threading.Event()
        with self.lock:
            conn = self._connection()
            if readonly:
                self._check_schema(conn)
            else:
                self._migrate(conn)

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._connect()
            except self._psycopg.Error as exc:
                raise StateUnavailable(f"{self.path}: cannot reach the state database ({_first_line(exc)}); is "
                                       "PostgreSQL running, and does the URL name its host, database and user?") from None
            self._leading = False  # a new session holds no advisory lock
        return self._conn

    def _connect(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, row_factory=_rows, connect_timeout=5)

    # --- several dispatchers -----------------------------------------------------------

    shared = True
    row_lock = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def serialize_repo(self, db: "Connection", repo: str) -> None:
        """Inside a transaction: the repository's commits are numbered (seq) by one
        dispatcher at a time; the lock goes with the transaction."""
        db.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (_SERIALIZE, repo))

    def notify(self, archs: tuple[str, ...]) -> None:
        """A hint to the other dispatchers: their waiting runners of `archs` look again
        (a runner's lease wait, 5 s, is the sparse poll behind it)."""
        try:
            with self.read() as db:
                db.execute("SELECT pg_notify(?, ?)", (CHANNEL, ",".join(archs)))
        except StateError:
            pass  # only a hint: the waiters' deadlines come anyway

    def announce(self, commits: list[tuple[str, str, str]]) -> None:
        """A hint to the dispatcher that publishes: these (kind, repo, sha) have pages or
        files to rewrite (work started here, or a commit seen on another branch)."""
        chunks, lines, size = [], [], 0
        for kind, repo, sha in commits:
            line = f"{kind} {repo} {sha}"
            if lines and size + len(line) + 1 > NOTIFY_MOST:
                chunks.append("\n".join(lines))
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        chunks.append("\n".join(lines))
        try:
            with self.read() as db:
                for chunk in chunks:
                    db.execute("SELECT pg_notify(?, ?)", (COMMITS_CHANNEL, chunk))
        except StateError:
            pass  # only a hint: the result rewrites the pages anyway

    def listen(self, on_work, on_commits) -> None:
        """Call `on_work(archs)` for work another dispatcher queued and `on_commits(list of
        (kind, repo, sha))` for what it announced, from a thread with a connection of its
        own (LISTEN holds it); it connects again after a failure."""
        threading.Thread(target=self._listen, args=(on_work, on_commits), name="listen", daemon=True).start()

    def _listen(self, on_work, on_commits) -> None:
        while not self._closed.is_set():
            try:
                conn = self._connect()
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {COMMITS_CHANNEL}")
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):  # back every second to see closed
                            if note.pid in self._own_pids():
                                continue
                            if note.channel == COMMITS_CHANNEL:
                                on_commits([tuple(line.split(" ", 2)) for line in note.payload.split("\n")
                                            if line.count(" ") == 2])
                            else:
                                on_work(tuple(a for a in note.payload.split(",") if a))
            except self._psycopg.Error:
                self._closed.wait(1.0)

    def _own_pids(self) -> set[int]:
        conn = self._conn
        return {conn.info.backend_pid} if conn is not None and not conn.closed else set()

    def leader(self) -> bool:
        """Whether this dispatcher holds the leader's advisory lock (taken when free; held
        by its session until the process or the connection dies)."""
        with self.lock:
            try:
                if self._leading:
                    # Still our session? A server restart ended it, and the lock with it,
                    # before anything told this connection.
                    self._connection().execute("SELECT 1")
                if not self._leading:
                    self._leading = bool(self._connection().execute(
                        "SELECT pg_try_advisory_lock(%s)", (_LEADER,)).fetchone()[0])
            except self._psycopg.Error:
                self._lost()
                self._leading = False
            return self._leading

    def session(self) -> int:
        with self.lock:
            try:
                return int(self._connection().info.backend_pid)
            except StateError:
                return 0

    def leader_session(self) -> int:
        # An advisory lock on one bigint key shows in pg_locks as classid (high 32 bits)
        # and objid (low 32 bits), objsubid 1.
        with self.read() as db:
            row = db.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = ? "
                             "AND objsubid = 1 AND granted", (_LEADER,)).fetchone()
        return int(row[0]) if row else 0

    def end_session(self, session: int) -> None:
        with self.read() as db:
            db.execute("SELECT pg_terminate_backend(?)", (session,))

    def _migrate(self, conn: Any) -> None:
        try:
            with conn.transaction():
                # One dispatcher migrates at a time; the others wait for it here.
                conn.execute("SELECT pg_advisory_xact_lock(7341)")
                version = self._version(conn)
                if version == 0:
                    conn.execute(SCHEMA)
                    conn.execute("CREATE TABLE polyarch_schema (version INTEGER NOT NULL)")
                    conn.execute("INSERT INTO polyarch_schema VALUES (%s)", (FIRST,))
                    version = FIRST
                if version > SCHEMA_VERSION:
                    raise StateError(f"{self.path}: schema version {version} is newer than this polyarch "
                                     f"({SCHEMA_VERSION}); run the newer polyarch")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[step])
                    conn.execute("UPDATE polyarch_schema SET version = %s", (step,))
        except self._psycopg.Error as exc:
            raise StateError(f"{self.path}: cannot set up the state database: {_first_line(exc)}") from None

    def _version(self, conn: Any) -> int:
        exists = conn.execute("SELECT to_regclass('polyarch_schema')").fetchone()[0]
        if exists is None:
            return 0
        row = conn.execute("SELECT version FROM polyarch_schema").fetchone()
        return row[0] if row else 0

    def _check_schema(self, conn: Any) -> None:
        try:
            version = self._version(conn)
        except self._psycopg.Error as exc:
            raise StateError(f"{self.path}: cannot read the state database: {_first_line(exc)}") from None
        if version == 0:
            raise StateError(f"{self.path}: no polyarch state in this database (has the dispatcher run with it?)")
        if version != SCHEMA_VERSION:
            raise StateError(f"{self.path}: schema version {version}, this polyarch expects {SCHEMA_VERSION} "
                             "(the dispatcher upgrades it when it starts)")

    def is_empty(self) -> bool:
        with self.read() as db:
            return all(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0  # noqa: S608 - constants
                       for t in TABLES)

    def close(self) -> None:
        self._closed.set()
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def tx(self) -> "_Transaction":
        return _Transaction(self)

    def read(self) -> "_Read":
        return _Read(self)

    def failure(self, exc: BaseException, verb: str) -> StateError:
        """A psycopg error as polyarch's: the server gone (restart, network) is
        StateUnavailable, which waiting cures; anything else is StateError."""
        kind = StateUnavailable if isinstance(exc, self._psycopg.OperationalError) else StateError
        return kind(f"{self.path}: cannot {verb} the state database: {_first_line(exc)}")

    def _lost(self) -> None:
        """After a failure: a broken connection is dropped, the next request opens one."""
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._conn = None


class _Read:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def __enter__(self) -> Connection:
        self.db.lock.acquire()
        try:
            return Connection(self.db._connection())
        except BaseException:
            self.db.lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, self.db._psycopg.Error):
                self.db._lost()
                raise self.db.failure(exc, "read") from None
        finally:
            self.db.lock.release()


class _Transaction:
    """BEGIN ... COMMIT under the lock; rolls back on any error, and a failed write
    becomes StateError naming the database, as on SQLite."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def __enter__(self) -> Connection:
        db = self.db
        db.lock.acquire()
        try:
            conn = db._connection()
            conn.execute("BEGIN")
        except db._psycopg.Error as exc:
            db._lost()
            db.lock.release()
            raise db.failure(exc, "write") from None
        except BaseException:
            db.lock.release()
            raise
        self.conn = conn
        return Connection(conn)

    def __exit__(self, exc_type, exc, tb) -> None:
        db = self.db
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except db._psycopg.Error as error:
                    self._rollback()
                    raise db.failure(error, "write") from None
            else:
                self._rollback()
                if isinstance(exc, db._psycopg.Error):
                    raise db.failure(exc, "write") from None
        finally:
            db.lock.release()

    def _rollback(self) -> None:
        try:
            if not self.conn.closed and self.conn.info.transaction_status != 0:
                self.conn.execute("ROLLBACK")
        except self.db._psycopg.Error:
            pass
        self.db._lost()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
