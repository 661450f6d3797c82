"""The observer daemon: fetch each repo, find what is new, report it, then advance.

The cursor of a branch moves only after the dispatcher acknowledged the commits as
durably stored, so whatever happens between (dispatcher down, observer killed) the next
poll finds the same commits again: the cursor file is the outbox.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import socket
import threading
import time
from typing import Callable, Optional

from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection, Dispatchers
from dispatcher.common.config import Config, RepoConfig, dispatcher_addresses
from dispatcher.common.errors import ConfigError, InvalidName, ProtocolError, RemoteError
from dispatcher.common.progress import Sink
from dispatcher.wire.protocol import Ack, Dispatch, ErrorCode, Role
from dispatcher.common.daemon import StopRequest
from dispatcher.common.sdnotify import Watchdog, notify
from dispatcher.wire.tls import for_client

from dispatcher.common.branches import is_watched, namespaces, watched_heads

from .cursors import Cursors
from .mirror import BranchUpdate, Change, FetchError, Mirror, local_git_dir
from .watch import RefWatcher

log = logging.getLogger("polyarch.observer")

BATCH = 500
MAX_REPO_BACKOFF = 300.0
MAX_DISPATCHER_BACKOFF = 30.0
MAX_PARALLEL_FETCHES = 8


class DispatcherDown(Exception):
    """The dispatcher could not take our commits; nothing advanced, try again later."""


class Observer:
    def __init__(self, config: Config, progress: Optional[Sink] = None) -> None:
        self.config = config
        self.progress = progress  # a progress bar for first mirrors (`once` on a terminal)
        self.settings = config.observer
        self.secret = load_secret(config.token_for("observer"))
        self.tls = for_client(config, "observer")
        self.cursors = Cursors(self.settings.state_dir / "cursors.json")
        self.mirrors: dict[str, Mirror] = {}
        self.conn: Optional[Connection] = None
        # Unacknowledged commits stay in the mirror past the cursor: whichever dispatcher
        # answers next is sent them.
        self.dispatchers = Dispatchers(lambda: dispatcher_addresses(config, "observer"))
        self.plain_commits = False  # the dispatcher is older than CommitInfo.parent
        self.name = f"observer@{socket.gethostname()}"[:100]
        self.wake = threading.Event()
        self.stop = StopRequest(wake=(self.wake,))
        self.triggered: set[str] = set()
        self._trigger_lock = threading.Lock()
        self.failures: dict[str, int] = {}
        self.next_poll: dict[str, float] = {r.name: 0.0 for r in config.repos}
        # Repos are polled in threads of their own, so one that hangs or is slow to fetch
        # delays only itself; the dispatcher connection and the cursor file are shared.
        self._report_lock = threading.Lock()
        self._fetch_slots = threading.BoundedSemaphore(MAX_PARALLEL_FETCHES)
        self._pool = Pool(MAX_PARALLEL_FETCHES)
        self._busy: set[str] = set()
        self._deleted: set[tuple[str, str]] = set()  # (repo, branch) deleted, cursor kept: said once

    # --- one poll -----------------------------------------------------------------------

    def poll_repo(self, repo: RepoConfig) -> None:
        """Fetch one repo and report its new commits. Raises FetchError or DispatcherDown."""
        mirror = self.mirrors.get(repo.name)
        if mirror is None:
            mirror = Mirror(self.settings.state_dir / "mirrors" / f"{repo.name}.git", repo.url,
                            self.settings.fetch_timeout, stop=self.stop.is_set, namespaces=namespaces(repo.watched))
            self.mirrors[repo.name] = mirror
        if not mirror.up_to_date():
            first = self.progress is not None and not mirror.refs()
            mirror.fetch((lambda step, done, total: self.progress(repo.name, step, done, total))
                         if first and self.progress is not None else None)
        watched = repo.watched
        heads = watched_heads(watched, mirror.refs())
        with self._report_lock:
            for branch in self.cursors.branches(repo.name):
                if not is_watched(watched, branch):
                    log.info("%s: branch %s is no longer watched; dropping its cursor", repo.name, branch)
                    self.cursors.drop(repo.name, branch)
                elif branch not in heads and (repo.name, branch) not in self._deleted:
                    # Kept: pushed again later, the branch continues from what was tested,
                    # and every commit since is queued, not only its new head.
                    log.info("%s: branch %s was deleted; keeping its cursor for when it comes back", repo.name, branch)
                    self._deleted.add((repo.name, branch))
            self._deleted -= {(repo.name, b) for b in heads}
        # Each ref that matches, in a stable order; one seen for the first time gets its head
        # tested (the first-sighting rule), and a commit known from another branch no job.
        for branch, head in sorted(heads.items()):
            update = mirror.update(branch, self.cursors.get(repo.name, branch), head, self.settings.max_backfill)
            if update.change != Change.NONE:
                with self._report_lock:
                    self._report(repo, update, head)

    def _report(self, repo: RepoConfig, update: BranchUpdate, head: str) -> None:
        if update.change == Change.FORCE_PUSHED:
            log.warning("%s/%s was force-pushed (the old head is not an ancestor of %s): testing %d commit(s) of "
                        "the new history", repo.name, update.branch, head[:12], len(update.commits))
        if update.skipped:
            log.warning("%s/%s: %d new commits, more than max_backfill = %d: testing the newest %d, skipping %d "
                        "older ones", repo.name, update.branch, update.skipped + len(update.commits),
                        self.settings.max_backfill, len(update.commits), update.skipped)
        for start in range(0, len(update.commits), BATCH):
            batch = update.commits[start:start + BATCH]
            reply = self._send(Dispatch(repo=repo.name, branch=update.branch, commits=list(batch)))
            # Acknowledged means committed to SQLite: only now may the cursor move.
            self.cursors.set(repo.name, update.branch, batch[-1].sha)
            log.info("%s/%s: reported %d commit(s) up to %s (%d new job(s))", repo.name, update.branch,
                     len(batch), batch[-1].sha[:12], reply.created)

    def _send(self, msg: Dispatch) -> Ack:
        if self.plain_commits:
            msg = _without_parents(msg)
        try:
            reply = self._request(msg)
        except RemoteError as exc:
            if exc.code == ErrorCode.UNAVAILABLE:  # its disk is full: like down, retry soon
                raise DispatcherDown(str(exc)) from None
            if exc.code == ErrorCode.BAD_MESSAGE and "parent" in str(exc) and not self.plain_commits:
                # A dispatcher older than this observer: it cannot take a commit's parent
                # (which only "what broke it" needs), so the commits go without.
                log.info("the dispatcher does not know commit parents (an older version); sending commits without")
                self.plain_commits = True
                return self._send(msg)
            raise
        except (OSError, ProtocolError, ConfigError) as exc:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            raise DispatcherDown(str(exc)) from None
        if not isinstance(reply, Ack):
            raise DispatcherDown(f"dispatcher answered dispatch with {reply.KIND.value}")
        return reply

    def _request(self, msg: Dispatch):
        """One request; a connection the dispatcher closed while we were quiet (idle_timeout)
        is not an outage: it is made again at once, without backoff or warning."""
        reused = self.conn is not None
        if self.conn is not None and self.conn.peer_closed():
            log.debug("the dispatcher closed our idle connection; connecting again")
            self.conn.close()
            self.conn, reused = None, False
        if self.conn is None:
            self.conn = self._connect()
        try:
            return self.conn.request(msg)
        except (OSError, ProtocolError):
            if not reused:
                raise
            # Closed in the instant between the check and the send: it never read the
            # message (a dispatcher answers what it reads), and a dispatch is idempotent.
            self.conn.close()
            self.conn = self._connect()
            return self.conn.request(msg)

    def _connect(self) -> Connection:
        return self.dispatchers.connect(
            lambda address: Connection(address, Role.OBSERVER, self.name, self.secret, tls=self.tls))

    def poll_once(self, repos: Optional[list[RepoConfig]] = None) -> bool:
        """Poll the given repos (default all) once, in parallel; True when every one succeeded."""
        chosen = repos if repos is not None else list(self.config.repos)
        outcome: dict[str, bool] = {}
        done = threading.Semaphore(0)

        def one(repo: RepoConfig) -> None:
            try:
                outcome[repo.name] = self._poll_one(repo)
            finally:
                done.release()
        for repo in chosen:
            self._pool.submit(lambda r=repo: one(r))
        for _ in chosen:
            done.acquire()
        return all(outcome.get(r.name, False) for r in chosen)

    def _poll_one(self, repo: RepoConfig) -> bool:
        if self.stop.is_set():
            return False
        try:
            with self._fetch_slots:
                self.poll_repo(repo)
            self.failures.pop(repo.name, None)
            self.next_poll[repo.name] = time.monotonic() + self.settings.poll_interval
            return True
        except FetchError as exc:
            self._backoff(repo.name, MAX_REPO_BACKOFF, f"{repo.name}: {exc}")
        except DispatcherDown as exc:
            self._backoff(repo.name, MAX_DISPATCHER_BACKOFF,
                          f"{repo.name}: dispatcher unreachable ({exc}); commits kept for the next try")
        except (RemoteError, InvalidName) as exc:
            self._backoff(repo.name, MAX_REPO_BACKOFF, f"{repo.name}: dispatcher refused: {exc}")
        except OSError as exc:  # our own disk (mirror, cursor file): full or failing
            self._backoff(repo.name, MAX_DISPATCHER_BACKOFF, f"{repo.name}: local I/O failed: {exc}")
        except Exception as exc:  # anything else a commit can provoke: back off, never spin on it
            if not self.failures.get(repo.name):
                log.exception("%s: polling failed unexpectedly", repo.name)
            self._backoff(repo.name, MAX_REPO_BACKOFF, f"{repo.name}: polling failed: {type(exc).__name__}: {exc}")
        return False

    def _start_poll(self, repo: RepoConfig) -> None:
        def work() -> None:
            try:
                self._poll_one(repo)
            finally:
                self._busy.discard(repo.name)
                self.wake.set()

        self._busy.add(repo.name)
        self._pool.submit(work)

    def _backoff(self, name: str, cap: float, message: str) -> None:
        n = self.failures[name] = self.failures.get(name, 0) + 1
        delay = min(cap, self.settings.poll_interval * 2 ** (n - 1)) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
        delay = min(delay, 1.0) if n == 1 else delay  # first retry soon: most outages are short
        self.next_poll[name] = time.monotonic() + delay
        log.warning("%s; retry in %.1f s", message, delay)

    # --- the loop -----------------------------------------------------------------------

    def trigger(self, name: str) -> None:
        with self._trigger_lock:
            self.triggered.add(name)
        self.wake.set()

    def run(self) -> None:
        watcher = RefWatcher(self.trigger)
        if self.settings.watch:
            for repo in self.config.repos:
                git_dir = local_git_dir(repo.url)
                if git_dir is not None:
                    watcher.watch(repo.name, git_dir)
                    log.info("%s: watching %s for pushes", repo.name, git_dir)
        log.info("observer polling %d repo(s) every %g s", len(self.config.repos), self.settings.poll_interval)
        watchdog = Watchdog()
        notify("READY=1")
        try:
            while not self.stop.is_set():
                watchdog.ping()
                now = time.monotonic()
                with self._trigger_lock:
                    triggered = set(self.triggered)
                    self.wake.clear()
                for repo in self.config.repos:
                    if repo.name in self._busy:
                        continue  # a push seen meanwhile stays triggered: polled again when this one ends
                    if self.next_poll[repo.name] <= now or (repo.name in triggered and repo.name not in self.failures):
                        with self._trigger_lock:
                            self.triggered.discard(repo.name)
                        self._start_poll(repo)
                waiting = [self.next_poll[r.name] for r in self.config.repos if r.name not in self._busy]
                timeout = max(0.0, min(waiting, default=now + 60) - time.monotonic())
                timeout = min(timeout, watchdog.max_sleep)
                self.wake.wait(timeout)
        finally:
            watcher.stop()
            if self.conn is not None:
                self.conn.close()
        log.info("observer stopped")



def serve(config: Config) -> None:
    observer = Observer(config)
    observer.stop.install()
    observer.run()


def once(config: Config, progress: Optional[Sink] = None) -> bool:
    return Observer(config, progress).poll_once()


def _without_parents(msg: Dispatch) -> Dispatch:
    return dataclasses.replace(msg, commits=[dataclasses.replace(c, parent="") for c in msg.commits])


class Pool:
    """A few daemon threads that poll repositories: a thread started per repository and
    poll cost more than an idle local poll itself at 1,000 repositories. Daemon threads,
    so that a fetch still running cannot hold up the observer's exit."""

    def __init__(self, size: int) -> None:
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._size, self._threads = size, 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        self._work.put(fn)
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"poll-{self._threads}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn = self._work.get()
            try:
                fn()
            except Exception:  # _poll_one handles its own; a bug in it must not kill the pool
                log.exception("a poll failed unexpectedly")
