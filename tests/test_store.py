"""Store state transitions on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dispatcher.errors import StateError
from dispatcher.protocol import CommitInfo, Status
from dispatcher.store import JobState, RunnerRow, Store

A, B = "a" * 40, "b" * 40


def runner(name: str, arch: str = "amd64", emulated: bool = False) -> RunnerRow:
    return RunnerRow(name, arch, "host", "x86_64", "0", emulated, "6.1", 0.0, 0.0)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state.sqlite3")
    yield s
    s.close()


def test_enqueue_is_idempotent(store: Store) -> None:
    assert store.enqueue("demo", "main", [CommitInfo(A), CommitInfo(B)], ["amd64", "arm64"]) == 4
    assert store.enqueue("demo", "main", [CommitInfo(A)], ["amd64", "arm64"]) == 0
    assert store.queued_count("amd64") == 2


def test_claim_takes_the_oldest_of_the_right_arch(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A), CommitInfo(B)], ["amd64"])
    assert store.claim(runner("r1", "arm64"), 10) is None
    job = store.claim(runner("r1", "amd64"), 10)
    assert job is not None and job.sha == A and job.attempt == 1 and job.state == JobState.LEASED
    assert (job.runner, job.runner_host, job.runner_kernel) == ("r1", "host", "6.1")


def test_result_is_recorded_once_and_a_duplicate_is_refused(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.claim(runner("r1", "amd64"), 10)
    done = store.finish(job.lease_id, Status.PASSED, 0, 1.0, 2.0, b"log", False, b"", "")
    assert done is not None and done.state == JobState.FINISHED
    assert store.finish(job.lease_id, Status.FAILED, 1, 1.0, 2.0, b"log", False, b"", "") is None
    [pending] = store.unpublished()
    assert pending.log == b"log"
    store.mark_published(job.id)
    assert store.unpublished() == []
    assert store.commit_states("demo", A) == {"amd64": "passed"}


def test_expired_lease_is_requeued_then_errors_after_max_attempts(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.claim(runner("r1", "amd64"), 10)
    [expired] = store.expire(max_attempts=2, now=first.leased_at + 11)
    assert expired.requeued
    # The late result of the lost lease is refused.
    assert store.finish(first.lease_id, Status.PASSED, 0, 0, 0, b"", False, b"", "") is None
    second = store.claim(runner("r2", "amd64"), 10)
    assert second.attempt == 2 and second.lease_id != first.lease_id
    assert store.heartbeat(second.lease_id, 10)
    assert store.expire(max_attempts=2, now=second.leased_at + 5) == []
    [gave_up] = store.expire(max_attempts=2, now=second.leased_at + 100)
    assert not gave_up.requeued
    [final] = store.unpublished()
    assert final.job.status == Status.ERROR and "max_attempts = 2" in final.job.reason


def test_release_requeues_without_spending_an_attempt(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = store.claim(runner("r1", "amd64"), 10)
    assert store.release(job.lease_id) is not None
    assert store.claim(runner("r2", "amd64"), 10).attempt == 1


def test_leases_survive_a_restart_with_a_fresh_deadline(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    s = Store(path, lease_grace=10)
    s.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    job = s.claim(runner("r1", "amd64"), 10)
    s.close()
    s = Store(path, lease_grace=10)
    assert s.lease_is_current(job.lease_id)
    assert s.finish(job.lease_id, Status.PASSED, 0, 0, 0, b"", False, b"", "") is not None
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


def test_wal_and_full_sync(store: Store) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_failure_with_retries_left_runs_again_elsewhere_and_a_pass_is_flaky(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.claim(runner("r1"), 10, alone=False)
    again = store.finish(first.lease_id, Status.FAILED, 1, 1.0, 2.0, b"first log", False, b"", "exit 1",
                         retry_failed={"demo": 1})
    assert again is not None and again.state == JobState.QUEUED and again.retries == 1
    # r1 failed it: while another amd64 runner is connected, r1 does not get it back.
    assert store.claim(runner("r1"), 10, alone=False) is None
    second = store.claim(runner("r2"), 10, alone=False)
    assert second is not None and second.attempt == 2
    done = store.finish(second.lease_id, Status.PASSED, 0, 3.0, 4.0, b"second log", False, b"", "",
                        retry_failed={"demo": 1})
    assert done.state == JobState.FINISHED and done.status == Status.FLAKY
    [pending] = store.unpublished()
    [earlier] = pending.attempts
    assert (earlier.attempt, earlier.runner, earlier.status, earlier.log) == (1, "r1", Status.FAILED, b"first log")
    store.mark_published(pending.job.id)
    assert store.commit_states("demo", A) == {"amd64": "flaky"}


def test_a_retry_goes_back_to_the_same_runner_when_it_is_alone(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.claim(runner("r1"), 10)
    store.finish(first.lease_id, Status.FAILED, 1, 1.0, 2.0, b"", False, b"", "", retry_failed={"demo": 2})
    second = store.claim(runner("r1"), 10, alone=True)
    store.finish(second.lease_id, Status.TIMEOUT, None, 1.0, 2.0, b"", False, b"", "", retry_failed={"demo": 2})
    third = store.claim(runner("r1"), 10, alone=True)
    done = store.finish(third.lease_id, Status.FAILED, 1, 1.0, 2.0, b"", False, b"", "", retry_failed={"demo": 2})
    # Out of retries: the failure is final, and both earlier attempts are kept.
    assert done.state == JobState.FINISHED and done.status == Status.FAILED
    [pending] = store.unpublished()
    assert [a.status for a in pending.attempts] == [Status.FAILED, Status.TIMEOUT]


def test_retries_do_not_count_against_lost_runner_attempts(store: Store) -> None:
    store.enqueue("demo", "main", [CommitInfo(A)], ["amd64"])
    first = store.claim(runner("r1"), 10)
    store.finish(first.lease_id, Status.FAILED, 1, 1.0, 2.0, b"", False, b"", "", retry_failed={"demo": 1})
    second = store.claim(runner("r1"), 10)
    # Attempt 2, but the first lease was not lost: one more loss is still allowed under max 2.
    [expired] = store.expire(max_attempts=2, now=second.leased_at + 11)
    assert expired.requeued


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    from dispatcher import store as store_module

    db.executescript(store_module._SCHEMA)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO commits (repo, sha, branch, received_at) VALUES ('demo', ?, 'main', 1)", (A,))
    db.execute("INSERT INTO jobs (repo, sha, arch, state, created_at) VALUES ('demo', ?, 'amd64', 'queued', 1)",
               (A,))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="upgrades it when it starts"):
        Store(path, readonly=True)
    upgraded = Store(path)
    job = upgraded.claim(runner("r1"), 10)
    assert job is not None and job.sha == A and job.retries == 0
    upgraded.close()
    assert Store(path, readonly=True).queued_count("amd64") == 0
