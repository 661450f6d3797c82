"""The hub's durable state: one Database (connection, transactions, migrations) and one
component per table over it, as buildbot's db connector composes its components.

    store.jobs      the jobs and the rules of their leases (enqueue, claim, heartbeat,
                    expire, record_result, release, publishing)
    store.commits   the commits (written inside the jobs' transactions)
    store.attempts  earlier failed attempts (retry_failed)
    store.runners   registered runners
    store.hook_runs hooks owed by published results, until run
    store.peers     the dispatchers on this state, and whether each lives
    store.queries   the views' reads
    store.history   tests over time: what broke each one where, and its outcomes

interface.py writes down what a backend provides. The Database is SQLite's
(database.py, the default) or PostgreSQL's (postgres.py, for a state given as a
postgresql:// URL); the components run the same SQL over either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from dispatcher.common.errors import StateError
from dispatcher.hub.store.attempts import Attempts
from dispatcher.hub.store.commits import Commits
from dispatcher.hub.store.database import Database
from dispatcher.hub.store.history import History
from dispatcher.hub.store.hook_runs import HookRuns
from dispatcher.hub.store.jobs import Enqueued, JobResult, Jobs, Policy
from dispatcher.hub.store.peers import Peers, new_id
from dispatcher.hub.store.postgres import PgDatabase, is_url
from dispatcher.hub.store.queries import Queries
from dispatcher.hub.store.rows import Expired, FinishedJob, JobRow, JobState, RunnerRow
from dispatcher.hub.store.runners import Runners

__all__ = ["Store", "Policy", "Enqueued", "JobResult", "Expired", "FinishedJob", "JobRow", "JobState", "RunnerRow"]


class Store:
    def __init__(self, location: Union[Path, str], policy: Optional[Policy] = None, readonly: bool = False) -> None:
        """`location`: the SQLite file, or a postgresql:// URL."""
        self.db = PgDatabase(location, readonly=readonly) if isinstance(location, str) and is_url(location) \
            else Database(Path(location), readonly=readonly)
        self.path = self.db.path
        self.policy = policy or Policy()
        self.readonly = readonly
        self.commits = Commits()
        self.attempts = Attempts(self.db)
        self.hook_runs = HookRuns(self.db)
        self.peers = Peers(self.db, new_id(), self.policy.heartbeat_timeout)
        self.jobs = Jobs(self.db, self.policy, self.commits, self.attempts, self.hook_runs, me=self.peers.me)
        if not readonly:
            self.peers.register()
            # Leases survive a restart; their runners get a full heartbeat period to come
            # back. On SQLite every lease is this dispatcher's; on PostgreSQL only those no
            # live dispatcher keeps.
            self.jobs.adopt_orphans(self.peers.alive() if self.db.shared else [self.peers.me])
        self.runners = Runners(self.db)
        self.queries = Queries(self.db)
        self.history = History(self.db)

    def close(self) -> None:
        if not self.readonly:
            try:
                self.peers.leave()
            except StateError:
                pass  # gone with the server: the others find this one dead instead
        self.db.close()
