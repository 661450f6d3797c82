"""The state's read side: the queries behind status, the dashboard, the gate and the API.

A component over the Database (database.py), as the tables' writers are (jobs.py and
the others); no query here writes.
"""

from __future__ import annotations

import json
from typing import Optional

from dispatcher.common.states import Status
from dispatcher.hub.store.database import Database
from dispatcher.hub.store.rows import JOB_COLUMNS, JOB_FROM, RUNNER_COLUMNS, JobRow, JobState, RunnerRow
from dispatcher.results.junit import JUnit

NO_LIMIT = 2 ** 62  # LIMIT -1 means none to SQLite, an error to PostgreSQL


class Queries:
    def __init__(self, db: Database) -> None:
        self._read = db.read

    def commit_states(self, repo: str, sha: str) -> dict[str, Optional[Status]]:
        """arch -> final status (None while not final) for one commit."""
        with self._read() as db:
            rows = db.execute("SELECT arch, state, status FROM jobs WHERE repo = ? AND sha = ?",
                              (repo, sha)).fetchall()
        return {r["arch"]: (Status(r["status"]) if JobState(r["state"]).final else None) for r in rows}

    def commit_branches(self, repo: str, sha: str) -> tuple[str, ...]:
        """Every branch a commit was seen on, the first first."""
        with self._read() as db:
            row = db.execute("SELECT branches FROM commits WHERE repo = ? AND sha = ?", (repo, sha)).fetchone()
        return tuple(json.loads(row["branches"])) if row is not None else ()

    def commit_reports(self, repo: str, sha: str) -> dict[str, JUnit]:
        """arch -> the JUnit report recorded with its final result, for the archs that had one."""
        with self._read() as db:
            rows = db.execute("SELECT arch, outcomes FROM jobs WHERE repo = ? AND sha = ? AND outcomes IS NOT NULL",
                              (repo, sha)).fetchall()
        return {r["arch"]: JUnit.from_bytes(r["outcomes"]) for r in rows}

    def jobs(self, repo: Optional[str] = None, sha: Optional[str] = None, limit_commits: int = 20) -> list[JobRow]:
        """Jobs of the newest `limit_commits` commits (filtered), newest commit first."""
        where, args = ["1 = 1"], []
        if repo:
            where.append("repo = ?")
            args.append(repo)
        if sha:
            # A full id matches exactly, on the primary key; a prefix needs LIKE (a scan).
            where.append("sha = ?" if len(sha) in (40, 64) else "sha LIKE ?")
            args.append(sha if len(sha) in (40, 64) else sha + "%")
        cond = " AND ".join(where)
        with self._read() as db:
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE (j.repo, j.sha) IN "
                f"(SELECT repo, sha FROM commits WHERE {cond} ORDER BY received_at DESC, rowid DESC LIMIT ?) "
                "ORDER BY c.received_at DESC, c.rowid DESC, j.arch", (*args, limit_commits)).fetchall()
        return [JobRow.from_row(r) for r in rows]

    def active_jobs(self, repo: Optional[str] = None, limit: int = 1000) -> list[JobRow]:
        """Queued and leased jobs, running ones first, then oldest first."""
        cond, args = ("AND j.repo = ?", (repo,)) if repo else ("", ())
        rows = []
        with self._read() as db:
            # One state at a time, each walked in id order on an index (state, id) and cut
            # at the limit: a backlog of 100,000 is never sorted whole.
            for state in (JobState.LEASED, JobState.QUEUED):
                if len(rows) >= limit:
                    break
                rows += db.execute(
                    f"SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.state = ? {cond} ORDER BY j.id LIMIT ?",
                    (state.value, *args, limit - len(rows))).fetchall()
        return [JobRow.from_row(r) for r in rows]

    def job_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(queued jobs per arch, jobs per state or final status) for the metrics."""
        queue: dict[str, int] = {}
        by_status: dict[str, int] = {}
        with self._read() as db:
            rows = db.execute("SELECT state, status, arch, count(*) FROM jobs GROUP BY state, status, arch")
            for state, status, arch, n in (tuple(r) for r in rows.fetchall()):
                if state == JobState.QUEUED.value:
                    queue[arch] = queue.get(arch, 0) + n
                    key = "queued"
                elif state == JobState.LEASED.value:
                    key = "running"
                else:
                    key = status or Status.ERROR.value
                by_status[key] = by_status.get(key, 0) + n
        return queue, by_status

    def commit_id(self, repo: str, sha: str) -> Optional[int]:
        """The commit's number, used as the HTTP API's job id (stable, never reused)."""
        with self._read() as db:
            row = db.execute("SELECT rowid FROM commits WHERE repo = ? AND sha = ?", (repo, sha)).fetchone()
        return row[0] if row else None

    def commit_by_id(self, commit_id: int) -> Optional[tuple[str, str]]:
        with self._read() as db:
            row = db.execute("SELECT repo, sha FROM commits WHERE rowid = ?", (commit_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def commit_count(self, repo: str) -> int:
        with self._read() as db:
            return db.execute("SELECT coalesce(max(seq), -1) + 1 FROM commits WHERE repo = ?", (repo,)).fetchone()[0]

    def ordinal(self, repo: str, sha: str) -> Optional[int]:
        """Position of a commit among its repo's commits, oldest = 0 (stable as commits arrive)."""
        with self._read() as db:
            row = db.execute("SELECT seq FROM commits WHERE repo = ? AND sha = ?", (repo, sha)).fetchone()
        return row[0] if row is not None else None

    def page(self, repo: str, first: int, count: int) -> list[JobRow]:
        """Jobs of the repo's commits with ordinals first .. first+count-1, newest commit first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE c.repo = ? AND c.seq >= ? AND c.seq < ? "
                "ORDER BY c.seq DESC, j.arch", (repo, first, first + count)).fetchall()
        return [JobRow.from_row(r) for r in rows]

    def queued_count(self, arch: str, at_most: Optional[int] = None) -> int:
        """Queued jobs of `arch`; counted no further than `at_most` (the park asks how many
        of its waiters to wake, on every new job: not a count of a 100,000-job backlog)."""
        with self._read() as db:
            return db.execute("SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = ? AND arch = ? LIMIT ?) AS q",
                              (JobState.QUEUED.value, arch, NO_LIMIT if at_most is None else at_most)).fetchone()[0]

    def runners(self) -> list[RunnerRow]:
        with self._read() as db:
            rows = db.execute(f"SELECT {RUNNER_COLUMNS} FROM runners ORDER BY name").fetchall()
        return [RunnerRow.from_row(r) for r in rows]
