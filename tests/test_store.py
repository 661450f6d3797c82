"""Store state transitions on a real SQLite file and on a real PostgreSQL database (the
`backend` fixture runs a test on both)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dispatcher.common.errors import StateError
from dispatcher.common.states import Status
from dispatcher.wire.protocol import CommitInfo
from dispatcher.hub.store import JobResult, JobState, Policy, RunnerRow, Store
from dispatcher.results.junit import parse as parse_junit
from conftest import state_of

A, B = "a" * 40, "b" * 40


def runner(name: str, arch: str = "amd64", emulated: bool = False) -> RunnerRow:
    return RunnerRow(name, arch, "host", "x86_64", "0", emulated, "6.1", 0.0, 0.0)


def result(status: Status, log: bytes = b"", reason: str = "", junit: bytes = b"") -> JobResult:
    return JobResult(status, 0 if status == Status.PASSED else 1, 1.0, 2.0, log, junit=junit,
                     report=parse_junit(junit) if junit else None, reason=reason)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Store:
    s = Store(state_of(backend, tmp_path), Policy(heartbeat_timeout=10, max_attempts=2))
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state.sqlite3", Policy(heartbeat_timeout=10, max_attempts=2))
    yield s
    s.close()


@pytest.fixture
def retrying(backend: str, request, tmp_path: Path):
    """A store whose policy retries demo's failures `n` times."""
    made = []

    def make(n: int) -> Store:
        where = tmp_path / f"retry{n}.sqlite3" if backend == "sqlite" else \
            request.getfixturevalue("pg_cluster").create_database(f"retry{n}_{id(made)}")
        s = Store(where, Policy(heartbeat_timeout=10, max_attempts=2, retry_failed={"demo": n}))
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def test_enqueue_is_idempotent(store: Store) -> None:
    assert store.jobs.enqueue("demo", "main", [CommitInfo(A), CommitInfo(B)], ["amd64", "arm64"]).created == 4
    assert store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64", "arm64"]).created == 0
    assert store.queries.queued_count("amd64") == 2


def test_claim_takes_the_oldest_of_the_right_arch(store: Store) -> None:
    store.jobs.enqueue("demo", "main", [CommitInfo(A), CommitInfo(B)], ["amd64"])
    assert store.jobs.claim(runner("r1", "arm64")) is None
    job = store.jobs.claim(runner("r1", "amd64"))
    assert job is not None and job.sha == A and job.attempt == 1 and job.state == JobState.LEASED
    assert (job.runner, job.runner_host, job.runner_kernel) == ("r1", "host", "6.1")


def test_result_is_recorded_once_and_a_duplicate_is_refused(store: Store) -> None:
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.jobs.claim(runner("r1", "amd64"))
    junit = b'<testsuite tests="2" failures="1"><testcase name="a"/><testcase name="b"><failure/></testcase></testsuite>'
    done = store.jobs.record_result(job.lease_id, result(Status.PASSED, b"log", junit=junit))
    assert done is not None and done.state == JobState.RECORDED
    # The test counts and failing tests are part of the record, parsed once.
    assert done.tests.total == 2 and done.failed_tests == ("b",)
    assert store.jobs.record_result(job.lease_id, result(Status.FAILED, b"log")) is None
    [pending] = store.jobs.unpublished()
    assert pending.log == b"log"
    store.jobs.mark_published(job.id)
    assert store.jobs.unpublished() == []
    assert store.queries.commit_states("demo", A) == {"amd64": Status.PASSED}
    assert store.queries.commit_reports("demo", A)["amd64"].failing == ["b"]
    [row] = store.queries.jobs("demo", A)
    assert row.state == JobState.PUBLISHED and row.failed_tests == ("b",)


def test_a_lease_whose_runner_was_heard_from_lately_does_not_expire(store: Store) -> None:
    # Its heartbeat may wait in line behind thousands of results: any frame from the
    # runner counts. Silent for heartbeat_timeout (10 s here), it expires as before.
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.jobs.claim(runner("r1", "amd64"))
    heard = {"r1": time.time() - 3}
    assert store.jobs.expire(now=time.monotonic() + 11, heard=lambda name: heard.get(name, 0.0)) == []
    assert store.jobs.current(job.lease_id)
    heard.clear()  # it left: the deadline it was given (7 s after that look) still holds
    assert store.jobs.expire(now=time.monotonic() + 17, heard=lambda name: heard.get(name, 0.0)) == []
    [expired] = store.jobs.expire(now=time.monotonic() + 19, heard=lambda name: heard.get(name, 0.0))
    assert expired.requeued and expired.job.id == job.id


def test_a_heartbeat_does_not_wait_for_the_database(store: Store) -> None:
    # With 10,000 runners beating, a heartbeat that queued behind a transaction or the
    # publisher's reads (the database's lock) came back after a second.
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.jobs.claim(runner("r1", "amd64"))
    beats: list[bool] = []
    with store.db.read():  # another thread's long read holds the database's lock
        beat = threading.Thread(target=lambda: beats.append(store.jobs.heartbeat(job.lease_id, "r1")))
        beat.start()
        beat.join(timeout=5)
        assert beats == [True], "the heartbeat waited for the database's lock"
    assert store.jobs.heartbeat(job.lease_id, "r2") is False  # not r2's lease
    assert store.jobs.record_result(job.lease_id, result(Status.PASSED), "r1") is not None
    assert store.jobs.heartbeat(job.lease_id, "r1") is False  # finished: no deadline comes back
    assert store.jobs.expire(now=time.monotonic() + 100) == []


def test_expired_lease_is_requeued_then_errors_after_max_attempts(store: Store) -> None:
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.jobs.claim(runner("r1", "amd64"))
    [expired] = store.jobs.expire(now=time.monotonic() + 11)
    assert expired.requeued
    # The late result of the lost lease is refused.
    assert store.jobs.record_result(first.lease_id, result(Status.PASSED)) is None
    second = store.jobs.claim(runner("r2", "amd64"))
    assert second.attempt == 2 and second.lease_id != first.lease_id
    assert store.jobs.heartbeat(second.lease_id)
    assert store.jobs.expire(now=time.monotonic() + 5) == []
    [gave_up] = store.jobs.expire(now=time.monotonic() + 100)
    assert not gave_up.requeued
    [final] = store.jobs.unpublished()
    assert final.job.status == Status.ERROR and "max_attempts = 2" in final.job.reason


def test_release_requeues_without_spending_an_attempt(store: Store) -> None:
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.jobs.claim(runner("r1", "amd64"))
    assert store.jobs.release(job.lease_id) is not None
    assert store.jobs.claim(runner("r2", "amd64")).attempt == 1


def test_leases_survive_a_restart_with_a_fresh_deadline(backend: str, tmp_path: Path) -> None:
    path = state_of(backend, tmp_path)
    s = Store(path, Policy(heartbeat_timeout=10))
    s.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = s.jobs.claim(runner("r1", "amd64"))
    s.close()
    s = Store(path, Policy(heartbeat_timeout=10))
    assert s.jobs.heartbeat(job.lease_id)  # the lease survived the restart
    assert s.jobs.record_result(job.lease_id, result(Status.PASSED)) is not None
    s.close()


def test_corrupt_database_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=f"{path}: unreadable state database"):
        Store(path)
    assert path.read_bytes().startswith(b"this is not")  # never reset


def test_readonly_store_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state database"):
        Store(tmp_path / "absent.sqlite3", readonly=True)


def test_wal_and_full_sync(sqlite_store: Store) -> None:
    store = sqlite_store
    other = sqlite3.connect(store.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # the file's mode: seen from any connection
    other.close()
    with store.db.read() as db:  # synchronous is the connection's own: ask the store's
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_failure_with_retries_left_runs_again_elsewhere_and_a_pass_is_flaky(retrying) -> None:
    store = retrying(1)
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.jobs.claim(runner("r1"), alone=False)
    again = store.jobs.record_result(first.lease_id, result(Status.FAILED, b"first log", "exit 1"))
    assert again is not None and again.state == JobState.QUEUED and again.retries == 1
    # r1 failed it: while another amd64 runner is connected, r1 does not get it back.
    assert store.jobs.claim(runner("r1"), alone=False) is None
    second = store.jobs.claim(runner("r2"), alone=False)
    assert second is not None and second.attempt == 2
    done = store.jobs.record_result(second.lease_id, result(Status.PASSED, b"second log"))
    assert done.state == JobState.RECORDED and done.status == Status.FLAKY
    [pending] = store.jobs.unpublished()
    [earlier] = pending.attempts
    assert (earlier.attempt, earlier.runner, earlier.status, earlier.log) == (1, "r1", Status.FAILED, b"first log")
    store.jobs.mark_published(pending.job.id)
    assert store.queries.commit_states("demo", A) == {"amd64": Status.FLAKY}


def test_a_retry_goes_back_to_the_same_runner_when_it_is_alone(retrying) -> None:
    store = retrying(2)
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.jobs.claim(runner("r1"))
    store.jobs.record_result(first.lease_id, result(Status.FAILED))
    second = store.jobs.claim(runner("r1"), alone=True)
    store.jobs.record_result(second.lease_id, result(Status.TIMEOUT))
    third = store.jobs.claim(runner("r1"), alone=True)
    done = store.jobs.record_result(third.lease_id, result(Status.FAILED))
    # Out of retries: the failure is final, and both earlier attempts are kept.
    assert done.state == JobState.RECORDED and done.status == Status.FAILED
    [pending] = store.jobs.unpublished()
    assert [a.status for a in pending.attempts] == [Status.FAILED, Status.TIMEOUT]


def test_retries_do_not_count_against_lost_runner_attempts(retrying) -> None:
    store = retrying(1)
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.jobs.claim(runner("r1"))
    store.jobs.record_result(first.lease_id, result(Status.FAILED))
    assert store.jobs.claim(runner("r1")).attempt == 2
    # Attempt 2, but the first lease was not lost: one more loss is still allowed under max 2.
    [expired] = store.jobs.expire(now=time.monotonic() + 11)
    assert expired.requeued


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    from dispatcher.hub.store import database

    db.executescript(database._SCHEMA)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO commits (repo, sha, branch, received_at) VALUES ('demo', ?, 'main', 1)", (A,))
    db.execute("INSERT INTO jobs (repo, sha, arch, state, created_at) VALUES ('demo', ?, 'amd64', 'queued', 1)",
               (A,))
    db.execute("INSERT INTO commits (repo, sha, branch, received_at) VALUES ('demo', ?, 'main', 2)", (B,))
    db.execute("INSERT INTO jobs (repo, sha, arch, state, status, created_at) "
               "VALUES ('demo', ?, 'amd64', 'done', 'passed', 1)", (B,))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="upgrades it when it starts"):
        Store(path, readonly=True)
    upgraded = Store(path)
    job = upgraded.jobs.claim(runner("r1"))
    assert job is not None and job.sha == A and job.retries == 0
    # A result published before the upgrade is published after it; it has no test counts.
    [old] = upgraded.queries.jobs("demo", B)
    assert old.state == JobState.PUBLISHED and old.status == Status.PASSED and old.tests is None
    # Each branch's head is the newest commit received on it; parents were not known then.
    assert upgraded.history.heads("demo") == [("main", B)] and upgraded.history.parent("demo", B) == ""
    upgraded.close()
    assert Store(path, readonly=True).queries.queued_count("amd64") == 0


def test_leases_live_on_the_monotonic_clock_and_can_be_given_time_back(store: Store, monkeypatch) -> None:
    store.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    store.jobs.claim(runner("r1"))
    # A wall-clock step of a day changes nothing: deadlines are monotonic.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400)
    assert store.jobs.expire() == []
    monkeypatch.setattr(time, "time", real)
    # After a stall of the dispatcher, the leases get the stalled time back.
    store.jobs.extend_leases(30)
    assert store.jobs.expire(now=time.monotonic() + 11) == []
    [expired] = store.jobs.expire(now=time.monotonic() + 41)
    assert expired.requeued


def test_both_backends_have_the_same_tables_and_columns(tmp_path: Path, pg_cluster) -> None:
    # One schema in two spellings (database.py's migrations, postgres.py's): a column added
    # to one and not the other would break the SQL both run, so the two are compared here.
    lite = Store(tmp_path / "state.sqlite3")
    pg = Store(pg_cluster.create_database("schema_twins"))
    try:
        with lite.db.read() as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            sqlite_columns = {t: sorted(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables}
        sqlite_columns["commits"] = sorted([*sqlite_columns["commits"], "rowid"])  # SQLite's is implicit
        with pg.db.read() as db:
            rows = db.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = 'public' AND table_name != 'polyarch_schema'").fetchall()
        pg_columns: dict[str, list[str]] = {}
        for table, column in rows:
            pg_columns.setdefault(table, []).append(column)
        assert {t: sorted(c) for t, c in pg_columns.items()} == sqlite_columns
    finally:
        lite.close()
        pg.close()


def test_two_dispatchers_on_one_database_lease_once_and_fence_a_moved_lease(pg_cluster) -> None:
    # Two Stores on one PostgreSQL database are two dispatchers. A job is leased once;
    # a runner that moved from A to B is adopted by B where it heartbeats, and A, whose
    # deadline for it runs out, can no longer expire it; its result counts once.
    url = pg_cluster.create_database("fenced")
    a, b = Store(url, Policy(heartbeat_timeout=10)), Store(url, Policy(heartbeat_timeout=10))
    try:
        a.jobs.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
        job = a.jobs.claim(runner("r1"))
        assert b.jobs.claim(runner("r2")) is None  # one job, one lease
        assert b.jobs.heartbeat(job.lease_id, "r2") is False  # not r2's to adopt
        assert b.jobs.heartbeat(job.lease_id, "r1")  # r1 moved to B: B keeps it now
        assert a.jobs.expire(now=time.monotonic() + 11) == []  # A's deadline ran out: fenced
        assert b.jobs.record_result(job.lease_id, result(Status.PASSED), "r1") is not None
        assert a.jobs.record_result(job.lease_id, result(Status.FAILED), "r1") is None  # late: dropped
        [done] = b.queries.jobs("demo", A)
        assert done.status == Status.PASSED and done.attempt == 1
        # B dies without a word; after heartbeat_timeout A finds it dead and adopts its leases.
        a.jobs.enqueue("demo", "main", [CommitInfo(B)], ["amd64"])
        lost = b.jobs.claim(runner("r3"))
        with b.db.tx() as db:
            db.execute("UPDATE dispatchers SET last_seen = 0 WHERE id = ?", (b.peers.me,))
        assert a.jobs.adopt_orphans(a.peers.alive()) == 1
        [expired] = a.jobs.expire(now=time.monotonic() + 11)
        assert expired.job.lease_id == lost.lease_id and expired.requeued
    finally:
        a.close()
        b.close()
