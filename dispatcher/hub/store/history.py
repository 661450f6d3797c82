"""What the state says about each test over time: the commit that broke it, its history.

Read from what recording a result already keeps: each commit's first parent (the
observer reports it), each job's failing tests (a column) and test outcomes (a
compressed JUnit report), each earlier attempt's outcomes, and each branch's head. So
nothing rereads a result file, and a walk costs one small query per commit it steps
over, never a scan of the history.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Iterable, Optional

from dispatcher.hub.store.database import Database
from dispatcher.hub.store.rows import JobState
from dispatcher.results.junit import MAX_NAMED_TESTS, JUnit
from dispatcher.results.junit import Outcome as TestOutcome
from dispatcher.views.records import Breakage, HistoryLine, Outcome

MAX_WALK = 500  # first parents followed back from a head before "failing since before"
FAILING = (TestOutcome.FAILED.value, TestOutcome.ERROR.value)


class History:
    def __init__(self, db: Database) -> None:
        self._read = db.read

    def parent(self, repo: str, sha: str) -> str:
        """The commit's first parent as reported ("" when not known)."""
        with self._read() as db:
            row = db.execute("SELECT parent FROM commits WHERE repo = ? AND sha = ?", (repo, sha)).fetchone()
        return row["parent"] if row else ""

    def children(self, repo: str, sha: str) -> list[str]:
        """Commits whose first parent this is (their new_failures compare with it)."""
        with self._read() as db:
            rows = db.execute("SELECT sha FROM commits WHERE repo = ? AND parent = ?", (repo, sha)).fetchall()
        return [r["sha"] for r in rows]

    def heads(self, repo: str) -> list[tuple[str, str]]:
        """(branch, head commit) of each branch the observer reported, by branch name."""
        with self._read() as db:
            rows = db.execute("SELECT branch, sha FROM branch_heads WHERE repo = ? ORDER BY branch", (repo,)).fetchall()
        return [(r["branch"], r["sha"]) for r in rows]

    def failing_at_heads(self, repo: str) -> list[Breakage]:
        """Every test failing at a branch's head, per architecture, with the commit that
        broke it: the oldest of the unbroken run of commits (first parents) failing it."""
        out: list[Breakage] = []
        with self._read() as db:
            for branch, head in self.heads(repo):
                rows = db.execute("SELECT arch, failed_tests FROM jobs WHERE repo = ? AND sha = ? AND "
                                  "failed_tests != '[]' AND state IN (?, ?) ORDER BY arch",
                                  (repo, head, JobState.PUBLISHED.value, JobState.RECORDED.value)).fetchall()
                for row in rows:
                    out += _walk(db, repo, branch, head, row["arch"], json.loads(row["failed_tests"]))
        return out

    def test_history(self, repo: str, test: str, archs: Iterable[str], limit: int) -> list[HistoryLine]:
        """One test's outcome on the newest `limit` commits (newest first), per arch."""
        archs = list(archs)
        memo: dict[tuple[str, str], Optional[list[str]]] = {}  # a parent is usually the next line's commit

        def outcomes(db: sqlite3.Connection, sha: str, arch: str) -> Optional[list[str]]:
            if (sha, arch) not in memo:
                memo[sha, arch] = _outcomes(db, repo, sha, arch, test)
            return memo[sha, arch]
        with self._read() as db:
            commits = db.execute("SELECT sha, subject, timestamp, parent FROM commits WHERE repo = ? "
                                 "ORDER BY rowid DESC LIMIT ?", (repo, limit)).fetchall()
            lines = []
            for c in commits:
                here = {a: outcomes(db, c["sha"], a) for a in archs}
                parent = {a: outcomes(db, c["parent"], a) for a in archs} if c["parent"] else {}
                cells = []
                for arch in archs:
                    seen = here[arch] or []
                    final = seen[-1] if seen else "not-run"
                    before = parent.get(arch) or []
                    cells.append(Outcome(arch, final, flaky=TestOutcome.PASSED.value in seen and
                                         any(o in FAILING for o in seen),
                                         first_failure=final in FAILING and bool(before) and before[-1] == "passed"))
                lines.append(HistoryLine(c["sha"], c["subject"], c["timestamp"], tuple(cells)))
        return lines


def _walk(db: sqlite3.Connection, repo: str, branch: str, head: str, arch: str, tests: list[str]) -> list[Breakage]:
    """Follow first parents from `head` while they fail the tests, one query per step."""
    failing = set(tests)
    broke: dict[str, tuple[str, bool]] = {}
    sha = head
    for _ in range(MAX_WALK):
        row = db.execute("SELECT c.parent, j.failed_tests, j.outcomes, j.state FROM commits c LEFT JOIN jobs j ON "
                         "j.repo = c.repo AND j.sha = c.parent AND j.arch = ? WHERE c.repo = ? AND c.sha = ?",
                         (arch, repo, sha)).fetchone()
        if row is None or not row["parent"] or row["state"] is None or not JobState(row["state"]).final \
                or row["outcomes"] is None:
            break  # the parent was not tested here (or has no JUnit): the run starts before what we know
        named = json.loads(row["failed_tests"])
        # The column names at most MAX_NAMED_TESTS; past that, the parent's whole report says.
        still = failing & (set(named) if len(named) < MAX_NAMED_TESTS else set(JUnit.from_bytes(row["outcomes"]).failing))
        for test in failing - still:
            broke[test] = (sha, True)  # the parent passed it (or did not have it): broken here
        failing = still
        if not failing:
            break
        sha = row["parent"]
    for test in failing:
        broke[test] = (sha, False)
    subjects = {s: _subject(db, repo, s) for s, _ in broke.values()}
    return [Breakage(branch, head, arch, t, s, subjects[s], known) for t, (s, known) in sorted(broke.items())]


def _subject(db: sqlite3.Connection, repo: str, sha: str) -> str:
    row = db.execute("SELECT subject FROM commits WHERE repo = ? AND sha = ?", (repo, sha)).fetchone()
    return row["subject"] if row else ""


def _outcomes(db: sqlite3.Connection, repo: str, sha: str, arch: str, test: str) -> Optional[list[str]]:
    """The test's outcome in each attempt on (sha, arch), oldest first, ending "queued" or
    "running" while the job is not final; "absent" / "no-junit" when an attempt says
    nothing of it; None when the commit has no job there."""
    job = db.execute("SELECT id, state, outcomes FROM jobs WHERE repo = ? AND sha = ? AND arch = ?",
                     (repo, sha, arch)).fetchone()
    if job is None:
        return None
    state = JobState(job["state"])
    earlier = [_of(r["outcomes"], test) for r in db.execute(
        "SELECT outcomes FROM attempts WHERE job_id = ? ORDER BY attempt", (job["id"],)).fetchall()]
    if not state.final:
        return earlier + ["running" if state == JobState.LEASED else "queued"]
    return earlier + [_of(job["outcomes"], test)]


def _of(blob: Optional[bytes], test: str) -> str:
    if blob is None:
        return "no-junit"
    outcome = JUnit.from_bytes(blob).outcomes.get(test)
    return outcome.value if outcome is not None else "absent"
