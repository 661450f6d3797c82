"""Writing result files, the dashboard, and running hooks: one thread, off the request path.

A result is acknowledged once it is committed to SQLite; its files follow here, normally
within milliseconds, then the dashboard's pages and the repository's hooks. After a
failure (disk full) the publisher retries every PUBLISH_RETRY seconds rather than at
each new result; what a crash leaves unwritten is written again from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator, Optional

from dispatcher.common.config import Config
from dispatcher.hub.dashboard import Dashboard
from dispatcher.common.errors import StateError
from dispatcher.common.files import Batch, remove_stale_temporaries
from dispatcher.hub.hooks import HookPlan, HookRunner
from dispatcher.hub.store.hook_runs import Owed
from dispatcher.hub.metrics import Metrics
from dispatcher.common.states import Overall, Status
from dispatcher.hub.reads import record_of, summary_of
from dispatcher.hub.store import FinishedJob, JobState, Store
from dispatcher.results.writing import rewrite_record, write_result

log = logging.getLogger("polyarch.dispatcher")

PUBLISH_RETRY = 5.0
RETRY_SLEEP = 0.2
LEAD_POLL = 1.0  # how soon a dispatcher that does not publish sees the publisher gone
PAGES_INTERVAL = 1.0  # seconds between two rewrites of pages for work that started
BACKFILL_SLICE = 0.05  # seconds of first-start dashboard pages between two looks for results
# Pages of work that just started wait this long: a short job's result, published by then,
# rewrites them once instead of three times (queued, running, final), and the job does
# not share a small machine's CPU with page rendering while it starts.
PAGES_DELAY = 0.25
FILES_ROUNDS = 8  # batches of result files written before their pages, while results keep coming
UNPUBLISHED_BATCH = 100


class Publisher:
    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.results_dir = config.dispatcher.results_dir
        self.hooks = HookRunner(config.path.parent, store.hook_runs.done)
        self.plan = HookPlan(config)
        self._offered = 0  # the highest hook id handed to the runner
        self.dashboard = Dashboard(self.results_dir, store,
                                   [(r.name, [a.value for a in r.architectures]) for r in config.repos])
        self._lock = threading.Lock()
        self._touch_lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._next = 0.0
        self._state_error = ""  # the last "state does not answer", said once
        self._leading = False
        self._backfill: Optional[Iterator[int]] = None  # every page, written a slice at a time
        self._backfill_began = 0.0
        self._backfill_pages = 0
        self._thread: Optional[threading.Thread] = None
        self._touched: set[tuple[str, str]] = set()  # commits whose work started: pages to rewrite
        self._rebranched: set[tuple[str, str]] = set()  # commits seen on a new branch: files to rewrite
        self._pages_due = 0.0

    def wake(self) -> None:
        self._wanted.set()

    def rebranched(self, commits: Iterable[tuple[str, str]]) -> None:
        """These (repo, commit), known before, reached another branch (or their parent's
        result came): the results already written say so soon."""
        with self._touch_lock:
            self._rebranched.update(commits)
        self._wanted.set()

    def touch(self, commits: Iterable[tuple[str, str]]) -> None:
        """These (repo, commit) were queued or started running: their pages show it soon
        (at most once per PAGES_INTERVAL, however many leases a second)."""
        with self._touch_lock:
            before = len(self._touched)
            self._touched.update(commits)
            grew = len(self._touched) > before
            if grew and not before:
                self._pages_due = max(self._pages_due, time.monotonic() + PAGES_DELAY)
        if grew:
            self._wanted.set()

    def announced(self, commits: list[tuple[str, ...]]) -> None:
        """Another dispatcher on the state started work on these commits ("touch") or saw
        them on another branch ("rebranched"): the publisher takes them as its own. Only
        the publisher: the others would hand them on again."""
        if not self._leading:
            return
        self.touch((repo, sha) for kind, repo, sha in commits if kind == "touch")
        self.rebranched((repo, sha) for kind, repo, sha in commits if kind == "rebranched")

    def _hand_on(self) -> None:
        """A dispatcher that does not publish hands what its work made stale to the one
        that does (store announce: a hint, like the rest of these sets, in memory)."""
        with self._touch_lock:
            touched, self._touched = self._touched, set()
            moved, self._rebranched = self._rebranched, set()
        if touched or moved:
            self.store.db.announce([("touch", r, c) for r, c in sorted(touched)]
                                   + [("rebranched", r, c) for r, c in sorted(moved)])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="publish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.hooks.stop()

    def _loop(self) -> None:
        """The one thread that writes result files, so result handlers never wait on them.

        A result is acknowledged once it is committed to the state; its files follow here,
        normally within milliseconds. After a failure (disk full) it retries every
        PUBLISH_RETRY seconds rather than at each new result.

        With several dispatchers on one state, one publishes (and runs hooks) at a time:
        the leader (the state's advisory lock); the others wait to take over, and the
        result files are one folder they all write (results_dir on shared storage)."""
        while not self._lead():
            if self._stopping.wait(LEAD_POLL):
                return
        self._first_pages()
        self._offer_hooks()  # those a stop or a crash left unrun: at least once
        while not self._stopping.is_set():
            with self._touch_lock:
                # Pages of started work are due at _pages_due: wake for them, not before.
                timeout = max(0.0, min(1.0, self._pages_due - time.monotonic())) if self._touched else 1.0
            self._wanted.wait(timeout=timeout)
            if self._stopping.is_set():
                return
            if time.monotonic() < self._next:
                time.sleep(min(RETRY_SLEEP, self._next - time.monotonic()))
                continue
            self._wanted.clear()
            if not self._lead():
                self._next = time.monotonic() + LEAD_POLL
                continue
            try:
                self._round()
            except StateError as exc:  # the state does not answer (PostgreSQL restarting): later
                if str(exc) != self._state_error:
                    log.error("publishing waits for the state: %s", exc)
                self._state_error = str(exc)
                self._next = time.monotonic() + PUBLISH_RETRY
            else:
                self._state_error = ""

    def _lead(self) -> bool:
        """Whether this dispatcher publishes now; on taking over, the hooks left pending
        are offered again (at least once, as after a restart)."""
        try:
            leading = self.store.peers.lead()
        except StateError:
            return False
        if not leading and self.store.db.shared:
            self._hand_on()
        if leading and not self._leading and self.store.db.shared:
            # Only the publisher writes the shared folder: what is left there now, the
            # one before it left in a crash.
            removed = remove_stale_temporaries(self.results_dir)
            log.info("this dispatcher now publishes results and runs hooks%s",
                     f" (removed {removed} temporary file(s) left in {self.results_dir})" if removed else "")
            self._offered = 0
        self._leading = leading
        return leading

    def _round(self) -> None:
        try:
            self.publish_pending()
        except StateError:
            raise
        except Exception:  # the publisher must outlive any one bad result
            log.exception("writing result files failed")
            self._next = time.monotonic() + PUBLISH_RETRY
        self._rewrite_rebranched()
        self._pages_of_started_work()
        self._offer_hooks()  # those queued work owes
        self._backfill_some()
        if self._backfill is not None:
            self._wanted.set()  # more pages to write: come straight back

    def _rewrite_rebranched(self) -> None:
        with self._touch_lock:
            commits, self._rebranched = self._rebranched, set()
        if not commits:
            return
        with self._lock:  # never beside a first write of the same result
            batch = Batch()
            try:
                for repo, sha in sorted(commits):
                    for job in self.store.queries.jobs(repo, sha, 1):
                        if job.sha != sha or job.state != JobState.PUBLISHED:
                            continue
                        earlier = self.store.attempts.of(job.id) if job.retries or job.reruns else ()
                        rewrite_record(self.results_dir, record_of(job, earlier),
                                       summary_of(self.store, job.repo, job.sha, job.branch), batch)
                batch.commit()
            except (OSError, StateError) as exc:
                batch.abort()
                log.error("cannot rewrite result files for a new branch under %s: %s; will retry", self.results_dir, exc)
                with self._touch_lock:
                    self._rebranched |= commits
                self._next = time.monotonic() + PUBLISH_RETRY
                return
        self._update_pages_of(commits)

    def _pages_of_started_work(self) -> None:
        with self._touch_lock:
            if time.monotonic() < self._pages_due:
                return  # the loop's wait ends when they are due
            touched, self._touched = self._touched, set()
        if touched:
            self._pages_due = time.monotonic() + PAGES_INTERVAL
            self._update_pages_of(touched)

    def _first_pages(self) -> None:
        """The dashboard's front pages at start (the config may list other repositories
        now); every page when there is no index yet, as after an upgrade from a polyarch
        without the dashboard, so that no link in the grid leads nowhere."""
        try:
            if (self.results_dir / "index.html").exists():
                self.dashboard.rebuild()
            else:
                self._backfill = self.dashboard.rebuild_steps()
                self._backfill_began = time.monotonic()
        except Exception:  # the pages are not worth refusing to work over
            log.exception("writing the HTML dashboard in %s failed", self.results_dir)

    def _backfill_some(self) -> None:
        """Every page when there was no dashboard, BACKFILL_SLICE s at a time between
        results: a long history must not hold back the results of today."""
        if self._backfill is None:
            return
        until = time.monotonic() + BACKFILL_SLICE
        try:
            with self._lock:
                while time.monotonic() < until:
                    self._backfill_pages += next(self._backfill)
        except StopIteration:
            log.info("wrote the HTML dashboard in %s: %d page(s) in %.1f s", self.results_dir, self._backfill_pages,
                     time.monotonic() - self._backfill_began)
            self._backfill = None
        except Exception:  # the pages are not worth refusing to work over
            log.exception("writing the HTML dashboard in %s failed", self.results_dir)
            self._backfill = None

    def publish_pending(self) -> None:
        """Write the files of every durable result that has none yet. Safe to call often.

        Files first: results recorded while a batch's files were written get theirs next,
        up to FILES_ROUNDS batches, and then the pages of them all are written once. Under
        load the pages cost once per round instead of delaying every later result's files
        (a result waited behind the pages of the one before)."""
        with self._lock:
            while True:
                written: list[FinishedJob] = []
                seen: set[int] = set()
                batch: list[FinishedJob] = []
                try:
                    for _ in range(FILES_ROUNDS):
                        unseen = [f for f in self.store.jobs.unpublished(UNPUBLISHED_BATCH + len(seen))
                                  if f.job.id not in seen]
                        if not unseen:
                            break
                        batch = unseen
                        seen |= {f.job.id for f in batch}
                        written += self._write_files(batch)
                    if not seen:
                        return
                    # The pages before the mark: a crash in between leaves the results
                    # unmarked, and the restart writes their files and pages again.
                    self._update_pages(written)
                    self.store.jobs.mark_published(*(f.job.id for f in written), hooks=self._hooks_owed(written))
                except (OSError, StateError) as exc:
                    first = batch[0].job
                    log.error("cannot write result files for %s %s %s%s under %s: %s; will retry", first.repo,
                              first.sha[:12], first.arch, f" and {len(batch) - 1} more" if len(batch) > 1 else "",
                              self.results_dir, exc)
                    self._next = time.monotonic() + PUBLISH_RETRY
                    return
                self._children_of(written)
                for finished in written:
                    job = finished.job
                    self.metrics.result((job.status or Status.ERROR).value,
                                        (job.finished_at or time.time()) - job.created_at)
                    log.info("result %s %s %s: %s (attempt %d, runner %s)", job.repo, job.sha[:12], job.arch,
                             (job.status or Status.ERROR).value, job.attempt, job.runner)
                self._offer_hooks()

    def _write_files(self, batch: list[FinishedJob]) -> list[FinishedJob]:
        """The files of a batch of results, made durable together (common/files.py); the
        results written (one that breaks the writer is set aside instead)."""
        files = Batch()
        try:
            written = [finished for finished in batch if self._publish_or_set_aside(finished, files)]
            files.commit()
        except BaseException:
            files.abort()
            raise
        return written

    def _children_of(self, written: list[FinishedJob]) -> None:
        """A result that arrives after its children's: their summary.json (new_failures,
        fixed) and pages compare with it now, so they are rewritten like a rebranched one."""
        stale = {(f.job.repo, child) for f in written for child in self.store.history.children(f.job.repo, f.job.sha)}
        if stale:
            self.rebranched(stale)

    def _update_pages(self, written: list[FinishedJob]) -> None:
        """The dashboard: derived from the files just written, so a failure here is
        logged and holds nothing up (the next result rewrites the same pages). Pages
        waiting to show these commits' started work are written here already."""
        commits = {(f.job.repo, f.job.sha) for f in written}
        with self._touch_lock:
            self._touched -= commits
        self._update_pages_of(commits)

    def _update_pages_of(self, commits: Iterable[tuple[str, str]]) -> None:
        try:
            self.dashboard.update(commits)
        except Exception:  # result files are written; pages can wait
            log.exception("updating the HTML dashboard in %s failed", self.results_dir)

    def _hooks_owed(self, written: list[FinishedJob]) -> dict[int, list[Owed]]:
        """job id -> the hooks its result owes, with their environment: recorded with the
        mark that the result is published, in one transaction. A commit whose last
        unpublished result is in `written` is done: its on_commit_done goes with that one."""
        owed: dict[int, list[Owed]] = {}
        ids = {f.job.id for f in written}
        last_of: dict[tuple[str, str], FinishedJob] = {(f.job.repo, f.job.sha): f for f in written}
        of_commit: dict[tuple[str, str], list] = {}  # one read per commit, however many of its archs
        for finished in written:
            job = finished.job
            if not self.plan.wanted(job.repo):
                continue
            key = (job.repo, job.sha)
            if key not in of_commit:
                of_commit[key] = [j for j in self.store.queries.jobs(job.repo, job.sha, 1) if j.sha == job.sha]
            jobs = of_commit[key]
            overall = Overall.of(j.status for j in jobs).value
            runs = self.plan.result(job, overall)
            done = all(j.id in ids or j.state in (JobState.PUBLISHED, JobState.SET_ASIDE) for j in jobs)
            if done and last_of[job.repo, job.sha] is finished:
                runs += self.plan.commit_done(job.repo, job.sha, job.branch,
                                              {j.arch: j.status or Status.ERROR for j in jobs})
            if runs:
                owed[job.id] = runs
        return owed

    def _offer_hooks(self) -> None:
        """Hand the hooks recorded and not yet run to the hook runner (at start: those a
        stop or a crash left unrun)."""
        pending = self.store.hook_runs.pending(after=self._offered)
        if pending:
            self._offered = max(self._offered, self.hooks.offer(pending))

    def _publish_or_set_aside(self, finished: FinishedJob, files: Batch) -> bool:
        """Write one result's files; False when the result itself cannot be written (not
        the disk: that raises, and is retried), which sets it aside with the reason so
        that every other result keeps flowing and a restart never replays it."""
        try:
            self._publish(finished, files)
            return True
        except (OSError, StateError):
            raise
        except Exception as exc:  # a result that breaks the writer must not block the line
            job = finished.job
            log.exception("result %s %s %s cannot be written; set aside", job.repo, job.sha[:12], job.arch)
            self.store.jobs.set_aside(job.id, f"{type(exc).__name__}: {exc}")
            return False

    def _publish(self, finished: FinishedJob, files: Batch) -> None:
        """The result's files, <arch>.json last, after a summary.json that counts it."""
        job = finished.job
        write_result(self.results_dir, record_of(job, finished.attempts), finished.log, finished.junit,
                     summary_of(self.store, job.repo, job.sha, job.branch), batch=files)
