"""The commits table: one row per (repo, commit), with who wrote it and what it says."""

from __future__ import annotations

import sqlite3
import time
from typing import Iterable

from dispatcher.wire.protocol import CommitInfo


class Commits:
    def add(self, db: sqlite3.Connection, repo: str, branch: str, commits: Iterable[CommitInfo]) -> list[str]:
        """Inside the caller's transaction: record the commits not known yet (idempotent);
        returns every commit's id, in order."""
        now = time.time()
        out = []
        for c in commits:
            db.execute("INSERT OR IGNORE INTO commits (repo, sha, branch, author, subject, timestamp, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (repo, c.sha, branch, c.author, c.subject, c.timestamp, now))
            out.append(c.sha)
        return out
