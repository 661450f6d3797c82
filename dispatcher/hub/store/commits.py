"""The commits table: one row per (repo, commit), with who wrote it and what it says."""

from __future__ import annotations

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
            db.execute("INSERT INTO commits (repo, sha, branch, author, subject, timestamp, received_at, branches, "
                       "parent, seq) VALUES (?, ?, ?, ?, ?, ?, ?, json_array(?), ?, (SELECT coalesce(max(seq), -1) + 1 "
                       f"FROM commits WHERE repo = ?)) ON CONFLICT (repo, sha) DO UPDATE SET {_FILL_EMPTY}",
                       (repo, c.sha, branch, c.author, c.subject, c.timestamp, now, branch, c.parent, repo))
            if branch and db.execute(
                    "UPDATE commits SET branches = json_insert(branches, '$[#]', ?) WHERE repo = ? AND sha = ? AND "
                    "NOT EXISTS (SELECT 1 FROM json_each(commits.branches) WHERE value = ?)",
                    (branch, repo, c.sha, branch)).rowcount:
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
        db.execute(f"UPDATE commits SET {_FILL_EMPTY.replace('excluded.', ':')} WHERE repo = :repo AND sha = :sha",
                   {"repo": repo, "sha": info.sha, "author": info.author[:100], "subject": info.subject[:200],
                    "timestamp": info.timestamp, "parent": info.parent})


# Each description field, set only where it is still empty.
_FILL_EMPTY = ("author = CASE WHEN commits.author = '' THEN excluded.author ELSE commits.author END, "
               "subject = CASE WHEN commits.subject = '' THEN excluded.subject ELSE commits.subject END, "
               "timestamp = CASE WHEN commits.timestamp = 0 THEN excluded.timestamp ELSE commits.timestamp END, "
               "parent = CASE WHEN commits.parent = '' THEN excluded.parent ELSE commits.parent END")
