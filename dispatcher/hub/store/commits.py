"""The commits table: one row per (repo, commit), with who wrote it and what it says."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Iterable

from dispatcher.wire.protocol import CommitInfo


class Commits:
    def add(self, db: sqlite3.Connection, repo: str, branch: str, commits: Iterable[CommitInfo],
            moves_head: bool = False) -> tuple[list[str], list[str]]:
        """Inside the caller's transaction: record the commits not known yet (idempotent),
        and `branch` among the branches each was seen on; returns every commit's id, in
        order, and those known before that this branch is new to. `moves_head`: the last
        commit is the branch's head now (the observer's reports, oldest first)."""
        now = time.time()
        out, rebranched = [], []
        for c in commits:
            # A commit first queued by hand or by the gate has no description: the
            # observer's report of it, later, fills it in.
            # The branch list is JSON text, read and written here rather than with SQL's JSON
            # functions: SQLite's and PostgreSQL's differ, the rule is the same.
            known = db.execute("SELECT branches FROM commits WHERE repo = ? AND sha = ?", (repo, c.sha)).fetchone()
            db.execute("INSERT INTO commits (repo, sha, branch, author, subject, timestamp, received_at, branches, "
                       "parent, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(seq), -1) + 1 "
                       f"FROM commits WHERE repo = ?)) ON CONFLICT (repo, sha) DO UPDATE SET {_FILL_EMPTY}",
                       (repo, c.sha, branch, c.author, c.subject, c.timestamp, now,
                        json.dumps([branch] if branch else []), c.parent, repo))
            branches = json.loads(known["branches"]) if known is not None else None
            if branch and branches is not None and branch not in branches:
                db.execute("UPDATE commits SET branches = ? WHERE repo = ? AND sha = ?",
                           (json.dumps([*branches, branch]), repo, c.sha))
                rebranched.append(c.sha)
            out.append(c.sha)
        if moves_head and branch and out:
            db.execute("INSERT INTO branch_heads (repo, branch, sha, moved_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (repo, branch) DO UPDATE SET sha = excluded.sha, moved_at = excluded.moved_at",
                       (repo, branch, out[-1], now))
        return out, rebranched

    def describe(self, db: sqlite3.Connection, repo: str, info: CommitInfo) -> None:
        """Inside the caller's transaction: a runner's description of a commit, for the
        fields still empty (what the observer said is never overwritten)."""
        db.execute("UPDATE commits SET author = CASE WHEN author = '' THEN ? ELSE author END, "
                   "subject = CASE WHEN subject = '' THEN ? ELSE subject END, "
                   "timestamp = CASE WHEN timestamp = 0 THEN ? ELSE timestamp END, "
                   "parent = CASE WHEN parent = '' THEN ? ELSE parent END WHERE repo = ? AND sha = ?",
                   (info.author[:100], info.subject[:200], info.timestamp, info.parent, repo, info.sha))


# Each description field, set only where it is still empty.
_FILL_EMPTY = ("author = CASE WHEN commits.author = '' THEN excluded.author ELSE commits.author END, "
               "subject = CASE WHEN commits.subject = '' THEN excluded.subject ELSE commits.subject END, "
               "timestamp = CASE WHEN commits.timestamp = 0 THEN excluded.timestamp ELSE commits.timestamp END, "
               "parent = CASE WHEN commits.parent = '' THEN excluded.parent ELSE commits.parent END")
