"""The jobs table: one job per (repo, commit, arch), and the rules of its lease.

Jobs move queued -> leased -> recorded -> published. `recorded` means the result is
committed to the database (with its test counts and failing tests, parsed once);
`published` means its files are in test_results/ too. Splitting the two lets the
dispatcher acknowledge a result the moment it is durable and write the files again
after a crash or a full disk, from the database, without ever running the job twice.

Heartbeat deadlines live in memory (leases.py), on the monotonic clock, so a step of the
wall clock expires nothing; the times stored with a job (leased, started, finished) are
wall-clock, for people.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Optional

from dispatcher.common.states import Status
from dispatcher.hub.store.attempts import Attempts
from dispatcher.hub.store.commits import Commits
from dispatcher.hub.store.database import Database
from dispatcher.hub.store.hook_runs import HookRuns, Owed
from dispatcher.hub.store.leases import Leases
from dispatcher.hub.store.rows import JOB_COLUMNS, JOB_FROM, Expired, FinishedJob, JobRow, JobState, RunnerRow
from dispatcher.results.junit import MAX_NAMED_TESTS, JUnit
from dispatcher.wire.protocol import CommitInfo


# (commit, its architectures just queued) -> the hooks owed, as HookRuns.add takes them
QueuedHooks = Callable[[str, list[str]], list[Owed]]

MAX_HANDBACKS = 20  # rolling restarts hand a job back once each; twenty is a loop


@dataclasses.dataclass(frozen=True)
class Policy:
    """The config's rules for leases and retries, given to the store once."""

    heartbeat_timeout: float = 10.0
    max_attempts: int = 3
    retry_failed: Mapping[str, int] = dataclasses.field(default_factory=dict)  # per repo


@dataclasses.dataclass(frozen=True)
class Enqueued:
    created: int  # jobs new to the queue
    rebranched: tuple[str, ...] = ()  # commits known before, seen now on another branch too


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What a runner reported for its lease, as the store records it."""

    status: Status
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    log: bytes
    log_truncated: bool = False
    junit: bytes = b""
    report: Optional[JUnit] = None  # the JUnit parsed once, by the hub, before recording
    reason: str = ""
    commit_info: Optional[CommitInfo] = None  # the runner's description of the commit, when asked


class Jobs:
    def __init__(self, db: Database, policy: Policy, commits: Commits, attempts: Attempts, hook_runs: HookRuns,
                 me: str = "") -> None:
        self.db, self.policy, self.commits, self.attempts, self.hook_runs = db, policy, commits, attempts, hook_runs
        self.me = me  # this dispatcher's id (peers.py): the leases it keeps name it
        self._lock = db.lock
        self.leases = Leases()

    def adopt_orphans(self, alive: list[str]) -> int:
        """Keep every lease no live dispatcher keeps (a dead one's, or this one's former
        self's after a restart), each with a fresh heartbeat period for its runner to
        come back in; how many."""
        marks = ", ".join("?" for _ in alive)
        with self._lock, self.db.tx() as db:
            rows = db.execute(f"UPDATE jobs SET dispatcher = ? WHERE state = ? AND (dispatcher IS NULL OR "
                              f"dispatcher NOT IN ({marks})) RETURNING lease_id, runner",
                              (self.me, JobState.LEASED.value, *alive)).fetchall()
        deadline = time.monotonic() + self.policy.heartbeat_timeout
        for row in rows:
            self.leases.hold(row["lease_id"], row["runner"] or "", deadline)
        return len(rows)

    def adopt(self, lease_id: str, runner: Optional[str]) -> bool:
        """A lease this dispatcher does not keep, named by the runner holding it (it moved
        here from another dispatcher): this one keeps it from now on. False when it is
        not a live lease of that runner."""
        if runner is None:
            return False
        with self._lock, self.db.tx() as db:
            row = db.execute("UPDATE jobs SET dispatcher = ? WHERE lease_id = ? AND state = ? AND runner = ? "
                             "RETURNING id", (self.me, lease_id, JobState.LEASED.value, runner)).fetchone()
            if row is not None:
                self.leases.hold(lease_id, runner, time.monotonic() + self.policy.heartbeat_timeout)
        return row is not None

    def cancel_unconfigured(self, configured: Mapping[str, Iterable[str]]) -> list[JobRow]:
        """End as `cancelled` every unfinished job of a repository or architecture the
        config no longer has (repo -> its architectures): nobody would ever run it, and a
        gate waiting for it would wait for good."""
        wanted = {repo: set(archs) for repo, archs in configured.items()}

        def why(row: sqlite3.Row) -> Optional[str]:
            if row["repo"] not in wanted:
                return f"repository {row['repo']} is no longer configured"
            if row["arch"] not in wanted[row["repo"]]:
                return f"architecture {row['arch']} is no longer configured for repository {row['repo']}"
            return None
        return self._cancel("1 = 1", (), why)

    def rerun(self, job_id: int, log: bytes, by: str, hooks: Optional[QueuedHooks] = None) -> Optional[JobRow]:
        """Queue a final job again: its result becomes an earlier attempt (with `log`, read
        back from its files), and the files keep showing it until the new one replaces
        them. None when the job is not final (queued or running: nothing to rerun).
        `hooks` as for enqueue, recorded with it."""
        with self._lock, self.db.tx() as db:
            job = _job_by(db, "j.id = ?", job_id, lock=self.db.row_lock)
            if job is None or not job.state.final or job.status is None:
                return None
            if hooks is not None:
                self.hook_runs.add(db, job_id, hooks(job.sha, [job.arch]))
            outcomes = db.execute("SELECT outcomes FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self.attempts.add(db, job, job.status, job.exit_code, job.started_at or 0.0, job.finished_at or 0.0,
                              job.reason, log, outcomes)
            db.execute("UPDATE jobs SET state = ?, status = NULL, exit_code = NULL, lease_id = NULL, reason = '', "
                       "log = NULL, junit = NULL, tests = NULL, failed_tests = '[]', outcomes = NULL, "
                       "reruns = reruns + 1, rerun_by = ?, avoid_runner = NULL, handbacks = 0 WHERE id = ?",
                       (JobState.QUEUED.value, by[:200], job_id))
            return _job_by(db, "j.id = ?", job_id)

    def cancel(self, repo: str, sha: str, archs: Iterable[str], reason: str) -> list[JobRow]:
        """End a commit's unfinished jobs (archs empty: all) as `cancelled` with `reason`."""
        chosen = set(archs)
        return self._cancel("repo = ? AND sha = ?", (repo, sha),
                            lambda row: reason if not chosen or row["arch"] in chosen else None)

    def _cancel(self, cond: str, args: tuple, why) -> list[JobRow]:
        """Unfinished jobs matching `cond` for which `why(row)` gives a reason end as
        `cancelled`. A lease held meanwhile is forgotten: its runner's next heartbeat is
        refused (lease lost), so it stops the job, and a result it sends anyway is late."""
        now = time.time()
        out = []
        with self._lock, self.db.tx() as db:
            rows = db.execute(f"SELECT id, repo, arch, lease_id FROM jobs WHERE state IN (?, ?) AND {cond}"
                              + self.db.row_lock, (JobState.QUEUED.value, JobState.LEASED.value, *args)).fetchall()
            for row in rows:
                reason = why(row)
                if reason is None:
                    continue
                db.execute("UPDATE jobs SET state = ?, status = ?, reason = ?, started_at = coalesce(leased_at, ?), "
                           "finished_at = ?, log = ?, lease_id = NULL WHERE id = ?",
                           (JobState.RECORDED.value, Status.CANCELLED.value, reason, now, now,
                            (reason + "\n").encode(), row["id"]))
                if row["lease_id"]:
                    self.leases.forget(row["lease_id"])
                job = _job_by(db, "j.id = ?", row["id"])
                if job is not None:
                    out.append(job)
        return out

    def enqueue(self, repo: str, branch: str, commits: Iterable[CommitInfo], archs: Iterable[str],
                hooks: Optional[QueuedHooks] = None, moves_head: bool = False) -> Enqueued:
        """Record commits and one job per arch; says how many jobs are new and which known
        commits reached a new branch. Idempotent. `hooks(sha, archs)` names the hooks a
        commit whose jobs on `archs` are new owes, recorded in the same transaction;
        `moves_head`: the last commit is the branch's head (an observer's report)."""
        now = time.time()
        archs = list(archs)
        created = 0
        with self.db.tx() as db:
            self.db.serialize_repo(db, repo)
            shas, rebranched = self.commits.add(db, repo, branch, commits, moves_head)
            for sha in shas:
                new: list[tuple[int, str]] = []
                for arch in archs:
                    made = db.execute("INSERT INTO jobs (repo, sha, arch, state, created_at) VALUES (?, ?, ?, ?, ?) "
                                      "ON CONFLICT DO NOTHING RETURNING id",
                                      (repo, sha, arch, JobState.QUEUED.value, now)).fetchone()
                    if made is not None:
                        new.append((made[0], arch))
                created += len(new)
                if new and hooks is not None:
                    self.hook_runs.add(db, new[0][0], hooks(sha, [arch for _, arch in new]))
        return Enqueued(created, tuple(rebranched))

    def claim(self, runner: RunnerRow, alone: bool = True) -> Optional[JobRow]:
        """Lease the oldest queued job of the runner's arch to it, or None.

        A job retried after failing on this runner is left for another one of the same
        arch, unless `alone` says no other is connected. The runner's host, machine and
        kernel are copied onto the job: the result must say where it ran even if that
        runner later re-registers elsewhere."""
        with self.db.tx() as db:
            return self._claim(db, runner, alone)

    def _claim(self, db: sqlite3.Connection, runner: RunnerRow, alone: bool) -> Optional[JobRow]:
        lease_id = secrets.token_hex(12)
        now = time.time()
        # SKIP LOCKED on PostgreSQL: another dispatcher's claim of a job passes it by.
        row = db.execute("SELECT id FROM jobs WHERE state = ? AND arch = ? AND (avoid_runner IS NULL "
                         "OR avoid_runner != ? OR ? = 1) ORDER BY id LIMIT 1" + self.db.skip_locked,
                         (JobState.QUEUED.value, runner.arch, runner.name, int(alone))).fetchone()
        if row is None:
            return None
        db.execute("UPDATE jobs SET state = ?, attempt = attempt + 1, lease_id = ?, runner = ?, leased_at = ?, "
                   "runner_host = ?, runner_machine = ?, runner_emulated = ?, runner_kernel = ?, runner_qemu = ?, "
                   "runner_root = ?, dispatcher = ? WHERE id = ?",
                   (JobState.LEASED.value, lease_id, runner.name, now, runner.host, runner.machine,
                    int(runner.emulated), runner.kernel, runner.qemu, runner.root, self.me, row["id"]))
        self.leases.hold(lease_id, runner.name, time.monotonic() + self.policy.heartbeat_timeout)
        return _job_by(db, "j.id = ?", row["id"])

    def current(self, lease_id: str) -> bool:
        """Whether `lease_id` is a live lease."""
        return self.leases.current(lease_id)

    def held_by(self, runner: str) -> list[str]:
        return self.leases.held_by(runner)

    def take_back(self, runner: str) -> list[Expired]:
        """End every lease `runner` holds, as if it had expired: the runner asks for new
        work, so it no longer runs that job (it restarted, or lost track). This is what
        keeps a runner to one lease at a time."""
        with self._lock:
            held = self.leases.held_by(runner)
            if not held:
                return []
            with self.db.tx() as db:
                out = self._expire(db, held, time.time())
            for lease_id in held:
                self.leases.forget(lease_id)
        return out

    def heartbeat(self, lease_id: str, runner: Optional[str] = None) -> bool:
        """Extend a lease; False when it is no longer current (expired or finished) or
        not `runner`'s. Takes no database lock (leases.py says why), unless the lease is
        kept by another dispatcher: the runner moved here, and this one adopts it."""
        if self.leases.extend(lease_id, runner, time.monotonic() + self.policy.heartbeat_timeout):
            return True
        return self.adopt(lease_id, runner)

    def extend_leases(self, seconds: float) -> None:
        """Move every lease's deadline `seconds` later: the dispatcher itself was stalled,
        and the runners' heartbeats of that time are still unread in their sockets. With
        other dispatchers on the state, some may have adopted this one's leases meanwhile
        (it stopped beating): it keeps exactly those still its own, and takes back any
        other where its runner heartbeats."""
        if not self.db.shared:
            self.leases.shift(seconds)
            return
        with self._lock, self.db.read() as db:
            rows = db.execute("SELECT lease_id, runner FROM jobs WHERE state = ? AND dispatcher = ?",
                              (JobState.LEASED.value, self.me)).fetchall()
            self.leases.retain({r["lease_id"]: r["runner"] or "" for r in rows}, seconds,
                               time.monotonic() + self.policy.heartbeat_timeout)

    def expire(self, now: Optional[float] = None, heard: Optional[Callable[[str], float]] = None) -> list[Expired]:
        """Take back every lease past its deadline (`now`: monotonic); requeue, or end as
        error after max_attempts. `heard(runner)` says when a runner was last heard from
        (wall clock, 0: never): any frame proves it alive as a heartbeat does, so a lease
        whose runner's result waits in line behind 10,000 others is not taken away."""
        now = time.monotonic() if now is None else now
        out: list[Expired] = []
        silent_for = None
        if heard is not None:
            wall = time.time()
            silent_for = lambda runner: wall - heard(runner)  # noqa: E731
        with self._lock:
            late = self.leases.late(now, silent_for, self.policy.heartbeat_timeout)
            if not late:
                return out
            with self.db.tx() as db:
                out = self._expire(db, late, time.time())
            # Only after the commit: a failed write leaves the leases to expire next time.
            for lease_id in late:
                self.leases.forget(lease_id)
        return out

    def _expire(self, db: sqlite3.Connection, late: list[str], now: float) -> list[Expired]:
        out: list[Expired] = []
        max_attempts = self.policy.max_attempts
        for lease_id in late:
            # Only a lease this dispatcher still keeps: one its runner took to another
            # dispatcher (which adopted it) lives on there.
            job = _job_by(db, "j.lease_id = ? AND j.state = 'leased' AND (j.dispatcher = ? OR j.dispatcher IS NULL)",
                          lease_id, self.me, lock=self.db.row_lock)
            if job is None:
                continue
            # Attempts that ended in a retried failure do not count against lost runners.
            if job.attempt - job.retries - job.reruns >= max_attempts:
                reason = (f"runner {job.runner} lost (no heartbeat); gave up after "
                          f"{job.attempt - job.retries - job.reruns} attempt(s), max_attempts = {max_attempts}")
                db.execute("UPDATE jobs SET state = ?, status = ?, reason = ?, started_at = leased_at, "
                           "finished_at = ?, log = ? WHERE id = ?",
                           (JobState.RECORDED.value, Status.ERROR.value, reason, now,
                            (reason + "\n").encode(), job.id))
                out.append(Expired(job, requeued=False))
            else:
                db.execute("UPDATE jobs SET state = ?, lease_id = NULL WHERE id = ?",
                           (JobState.QUEUED.value, job.id))
                out.append(Expired(job, requeued=True))
        return out

    def record_result(self, lease_id: str, result: JobResult, runner: Optional[str] = None) -> Optional[JobRow]:
        """Record the result of a current lease; None for a late or duplicate result.

        A failure (or timeout) with retries left under the policy's retry_failed is kept
        as an attempt and the job queued again: the returned row is then in state QUEUED.
        A pass after such a retry is recorded as FLAKY."""
        return self.record_and_claim(lease_id, result, runner)[0]

    def record_and_claim(self, lease_id: str, result: JobResult, runner: Optional[str] = None,
                         claimer: Optional[RunnerRow] = None,
                         alone: bool = True) -> tuple[Optional[JobRow], Optional[JobRow]]:
        """record_result, and then, in the same transaction, claim the next job for
        `claimer` (the runner that sent the result): one round trip and one commit per job
        instead of two. (recorded job or None, claimed job or None); a late or duplicate
        result claims nothing (the runner asks for work as usual)."""
        with self._lock:
            if not self.leases.current(lease_id, runner) and not self.adopt(lease_id, runner):
                return None, None
            with self.db.tx() as db:
                job = self._record(db, lease_id, result)
                claimed = self._claim(db, claimer, alone) if job is not None and claimer is not None else None
            if job is not None:
                self.leases.forget(lease_id)
            return job, claimed

    def _record(self, db: sqlite3.Connection, lease_id: str, result: JobResult) -> Optional[JobRow]:
        """Inside the caller's transaction and lock: the result of a current lease."""
        job = _job_by(db, "j.lease_id = ? AND j.state = 'leased'", lease_id, lock=self.db.row_lock)
        if job is None:
            return None
        if result.commit_info is not None and result.commit_info.sha == job.sha:
            self.commits.describe(db, job.repo, result.commit_info)
        status = result.status
        if status.retryable and job.retries < self.policy.retry_failed.get(job.repo, 0):
            self.attempts.add(db, job, status, result.exit_code, result.started_at, result.finished_at,
                              result.reason, result.log, result.report.to_bytes() if result.report else None)
            db.execute("UPDATE jobs SET state = ?, lease_id = NULL, retries = retries + 1, avoid_runner = ? "
                       "WHERE id = ?", (JobState.QUEUED.value, job.runner, job.id))
            return _job_by(db, "j.id = ?", job.id)
        if status == Status.PASSED and job.retries:
            status = Status.FLAKY
        report = result.report
        tests = json.dumps(dataclasses.asdict(report.counts)) if report else None
        failed = json.dumps(report.failing[:MAX_NAMED_TESTS]) if report else "[]"
        db.execute("UPDATE jobs SET state = ?, status = ?, exit_code = ?, started_at = ?, "
                   "finished_at = ?, log = ?, log_truncated = ?, junit = ?, reason = ?, tests = ?, "
                   "failed_tests = ?, outcomes = ? WHERE id = ?",
                   (JobState.RECORDED.value, status.value, result.exit_code, result.started_at,
                    result.finished_at, result.log, int(result.log_truncated),
                    (result.junit or None) if report else None, result.reason, tests, failed,
                    report.to_bytes() if report else None, job.id))
        return _job_by(db, "j.id = ?", job.id)

    def release(self, lease_id: str, reason: str = "", runner: Optional[str] = None) -> Optional[JobRow]:
        """A runner handed a job back: requeue it without spending an attempt. After
        MAX_HANDBACKS, the job ends as error instead: something on the runners' side keeps
        it from running, and queueing it again would only loop."""
        with self._lock:
            if runner is not None and not self.leases.current(lease_id, runner) and not self.adopt(lease_id, runner):
                return None
            with self.db.tx() as db:
                job = _job_by(db, "j.lease_id = ? AND j.state = 'leased'", lease_id, lock=self.db.row_lock)
                if job is None:
                    return None
                count = db.execute("SELECT handbacks FROM jobs WHERE id = ?", (job.id,)).fetchone()[0] + 1
                if count >= MAX_HANDBACKS:
                    why = (f"handed back {count} times without a result (last: {reason[:200] or 'stopping'}); "
                           "given up (status error)")
                    db.execute("UPDATE jobs SET state = ?, status = ?, reason = ?, started_at = leased_at, "
                               "finished_at = ?, log = ?, handbacks = ? WHERE id = ?",
                               (JobState.RECORDED.value, Status.ERROR.value, why, time.time(), (why + "\n").encode(),
                                count, job.id))
                else:
                    db.execute("UPDATE jobs SET state = ?, lease_id = NULL, attempt = attempt - 1, handbacks = ? "
                               "WHERE id = ?", (JobState.QUEUED.value, count, job.id))
                job = _job_by(db, "j.id = ?", job.id)
            self.leases.forget(lease_id)
            return job

    # --- publishing ------------------------------------------------------------------

    def unpublished(self, limit: int = 100) -> list[FinishedJob]:
        with self.db.read() as db:
            rows = db.execute(f"SELECT {JOB_COLUMNS}, j.log AS log_blob, j.junit AS junit_blob FROM {JOB_FROM} "
                              "WHERE j.state = ? ORDER BY j.id LIMIT ?",
                              (JobState.RECORDED.value, limit)).fetchall()
            out = []
            for r in rows:
                job = JobRow.from_row(r)
                attempts = self.attempts.of(job.id) if job.retries or job.reruns else ()
                out.append(FinishedJob(job, r["log_blob"] or b"", r["junit_blob"] or b"", attempts))
        return out

    def has_unpublished(self) -> bool:
        with self.db.read() as db:
            return db.execute("SELECT 1 FROM jobs WHERE state = ? LIMIT 1",
                              (JobState.RECORDED.value,)).fetchone() is not None

    def mark_published(self, *job_ids: int, hooks: Mapping[int, list] = MappingProxyType({})) -> None:
        """The files are written: drop the copies of log and JUnit kept for them, and record
        the hooks each result owes (job id -> [(event, command, timeout, env)]).

        Several at once in one transaction: one fsync for a whole batch of results."""
        with self.db.tx() as db:
            for job_id, runs in hooks.items():
                self.hook_runs.add(db, job_id, runs)
            db.executemany("UPDATE jobs SET state = ?, log = NULL, junit = NULL WHERE id = ? AND state = ?",
                           [(JobState.PUBLISHED.value, job_id, JobState.RECORDED.value) for job_id in job_ids])
            self.attempts.drop_logs(db, job_ids)

    def set_aside(self, job_id: int, why: str) -> None:
        """A result whose files cannot be written for a reason of its own: kept in the state
        with the reason, never offered to the publisher again (it would block the line)."""
        with self.db.tx() as db:
            db.execute("UPDATE jobs SET state = ?, reason = reason || ? WHERE id = ? AND state = ?",
                       (JobState.SET_ASIDE.value, f" [result files not written: {why[:300]}]", job_id,
                        JobState.RECORDED.value))

    def by_lease(self, lease_id: str) -> Optional[JobRow]:
        with self.db.read() as db:
            return _job_by(db, "j.lease_id = ?", lease_id)


def _job_by(db: sqlite3.Connection, cond: str, *values: object, lock: str = "") -> Optional[JobRow]:
    """The job matching `cond`; `lock` (the database's row_lock) holds its row until the
    transaction ends, where another dispatcher may change it meanwhile."""
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE {cond}" + (f"{lock} OF j" if lock else ""),
                     values).fetchone()
    return JobRow.from_row(row) if row else None
