"""The hub's rules: what happens on register, dispatch, submit, lease, heartbeat, result,
release and query. The socket handler (server.py) and the HTTP API (http_api.py) only
translate their wire into these calls and the typed errors back into replies.

Runners long-poll for work. New work bumps a generation and tells the listeners (the
socket server's park, hub/park.py, which keeps waiting runners without a thread each)
which architectures it is for; `lease`, for callers in-process, waits on a condition
instead. Either way a new job reaches a waiting runner within milliseconds. `periodic` (expiring leases,
waking the publisher for results a crash or a full disk left unwritten, recording when
runners were seen) runs from the server's service_actions.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Optional

from dispatcher.common.config import Config, RepoConfig
from dispatcher.common.errors import (LeaseLost, NotAllowed, ProtocolError, UnknownArch, UnknownName)
from dispatcher.common.files import read_from, read_regular
from dispatcher.common.utf8 import whole_characters
from dispatcher.common.names import (check_branch, check_commit, check_commit_prefix, check_runner, is_commit,
                                     parse_arch)
from dispatcher.common.states import CellState, Status
from dispatcher.hub.ahead import Durations
from dispatcher.hub.live import JobKey, LiveLogs
from dispatcher.hub.metrics import Metrics
from dispatcher.hub.presence import Presence
from dispatcher.hub.upkeep import Upkeep
from dispatcher.hub.publisher import Publisher
from dispatcher.hub.reads import commit_status, status_report
from dispatcher.hub.store.interface import State
from dispatcher.hub.store import JobResult, JobRow, JobState, RunnerRow
from dispatcher.hub.store.jobs import QueuedHooks
from dispatcher.results.junit import parse as parse_junit
from dispatcher.results.layout import File
from dispatcher.results.layout import path as result_path
from dispatcher.wire.protocol import (CommitInfo, CommitStatus, Heartbeat, Job, LogSource, LogText, Register, Result,
                                      StatusReport)

log = logging.getLogger("polyarch.dispatcher")

MAX_LEASE_WAIT = 30.0
MAX_COMMITS_PER_DISPATCH = 1000
LOG_READ_MOST = 256 * 1024  # bytes of log in one LOG_TEXT
MAX_STATUS_COMMITS = 1000  # commits in one STATUS_REPORT: well within a frame


class Hub:
    def __init__(self, config: Config, store: State) -> None:
        self.config = config
        self.store = store
        self.presence = Presence()
        self._identities = {r.name: r for r in config.dispatcher.runners}
        self._cancel_unconfigured()
        self.metrics = Metrics()
        self.publisher = Publisher(config, store, self.metrics)
        self.live = LiveLogs(config.dispatcher.results_dir, config.dispatcher.live_log_limit)
        self.durations = Durations()  # which jobs are short enough to lease one ahead
        self.stopping = threading.Event()
        self._work = threading.Condition()
        self._generation = 0
        self._work_listeners: list[Callable[[tuple[str, ...]], None]] = []
        # A runner with a request on its way (the socket server says) is alive, as by a heartbeat.
        self.speaking: Callable[[str], bool] = lambda runner: False
        self.upkeep = Upkeep(self)
        # Work another dispatcher on this state queued wakes this one's waiting runners;
        # what it announces (work started, commits on another branch) reaches the publisher.
        store.db.listen(self.wake_local, self.publisher.announced)

    # --- the work queue ------------------------------------------------------------------

    def _cancel_unconfigured(self) -> None:
        """At start: work for what the config no longer has ends `cancelled`, saying why."""
        ended = self.store.jobs.cancel_unconfigured({r.name: [a.value for a in r.architectures]
                                                     for r in self.config.repos})
        for job in ended[:20]:
            log.warning("cancelled %s %s on %s: %s", job.repo, job.sha[:12], job.arch, job.reason)
        if len(ended) > 20:
            log.warning("cancelled %d more job(s) of repositories or architectures no longer configured",
                        len(ended) - 20)

    def notify_work(self, *archs: str) -> None:
        """Work for `archs` (none named: any) may be there now: queued, handed back, or
        a runner came or went (which changes who may take a retry). The other
        dispatchers on this state are told too (PostgreSQL's NOTIFY)."""
        self.wake_local(archs)
        self.store.db.notify(archs)

    def wake_local(self, archs: tuple[str, ...]) -> None:
        """notify_work for this dispatcher's own waiting runners only."""
        with self._work:
            self._generation += 1
            self._work.notify_all()
        for listener in self._work_listeners:
            listener(archs)

    def on_work(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        """Call `listener(archs)` after each notify_work (on the notifying thread: keep it short)."""
        self._work_listeners.append(listener)

    @property
    def generation(self) -> int:
        """Bumped by every notify_work: read it before a lease finds nothing, and a change
        after says the lease must look again rather than wait."""
        with self._work:
            return self._generation

    def stop(self) -> None:
        self.stopping.set()
        self.notify_work()
        self.publisher.wake()
        self.live.close_all()

    # --- names -------------------------------------------------------------------------

    def repo(self, name: str) -> RepoConfig:
        return self.config.require_repo(name)

    # --- observers and clients ---------------------------------------------------------

    def dispatch(self, repo_name: str, branch: str, commits: list[CommitInfo]) -> int:
        """New commits of a watched branch, oldest first; returns how many jobs are new."""
        repo = self.repo(repo_name)
        check_branch(branch)
        if len(commits) > MAX_COMMITS_PER_DISPATCH:
            raise ProtocolError(f"more than {MAX_COMMITS_PER_DISPATCH} commits in one message")
        for c in commits:
            check_commit(c.sha)
            if c.parent:
                check_commit(c.parent)
        done = self.store.jobs.enqueue(repo.name, branch, commits, [a.value for a in repo.architectures],
                                       hooks=self._queued_hooks(repo.name, branch), moves_head=True)
        created = done.created
        if done.rebranched:
            log.info("%d known commit(s) of %s seen on %s too", len(done.rebranched), repo.name, branch)
            self.publisher.rebranched((repo.name, sha) for sha in done.rebranched)
        if created:
            log.info("queued %d job(s) for %d commit(s) of %s/%s", created, len(commits), repo.name, branch)
            self.notify_work(*(a.value for a in repo.architectures))
            self.publisher.touch((repo.name, c.sha) for c in commits)
        return created

    def _queued_hooks(self, repo: str, branch: str) -> Optional[QueuedHooks]:
        if not self.publisher.plan.wanted(repo):
            return None
        return lambda sha, archs: self.publisher.plan.queued(repo, sha, branch, archs)

    def submit(self, repo_name: str, commit: str, branch: str, archs: list[str], by: str) -> int:
        """Queue one commit on some (default: all) of its repo's archs; returns new jobs.
        Raises InvalidName, UnknownRepo or UnknownArch, having changed nothing."""
        repo = self.repo(repo_name)
        check_commit(commit)
        branch = check_branch(branch) if branch else repo.default_branch
        chosen = [parse_arch(a) for a in archs] or list(repo.architectures)
        unknown = [a.value for a in chosen if a not in repo.architectures]
        if unknown:
            raise UnknownArch(f"{', '.join(unknown)} not configured for repo {repo.name}")
        done = self.store.jobs.enqueue(repo.name, branch, [CommitInfo(commit)], [a.value for a in chosen],
                                       hooks=self._queued_hooks(repo.name, branch))
        created = done.created
        if done.rebranched:
            self.publisher.rebranched([(repo.name, commit)])
        if created:
            log.info("queued %d job(s) for %s %s (submitted by %s)", created, repo.name, commit[:12], by)
            self.notify_work(*(a.value for a in chosen))
            self.publisher.touch([(repo.name, commit)])
        return created

    def rerun(self, repo_name: str, commit: str, archs: list[str], failed_only: bool, by: str) -> int:
        """Run a commit's final results again (archs empty: all; `failed_only`: those that
        did not pass) as new attempts; returns how many were queued. A commit the
        dispatcher does not know is refused: there is no result to redo."""
        repo = self.repo(repo_name)
        check_commit(commit)
        chosen = {parse_arch(a).value for a in archs}
        unknown = chosen - {a.value for a in repo.architectures}
        if unknown:
            raise UnknownArch(f"{', '.join(sorted(unknown))} not configured for repo {repo.name}")
        jobs = [j for j in self.store.queries.jobs(repo.name, commit, 1) if j.sha == commit]
        if not jobs:
            raise UnknownName(f"commit {commit} of {repo.name} is not known to the dispatcher, so there is nothing "
                              "to rerun; queue it with polyarch-dispatcher submit")
        queued = 0
        for job in jobs:
            if (chosen and job.arch not in chosen) or (failed_only and job.status is not None and job.status.passing):
                continue
            # The result's log lives in its file once published: it goes with the attempt.
            output = read_regular(result_path(self.config.dispatcher.results_dir, File.LOG, repo=job.repo,
                                              commit=job.sha, arch=job.arch), 64 << 20)
            if self.store.jobs.rerun(job.id, output, by, hooks=self._queued_hooks(repo.name, job.branch)) is not None:
                log.info("rerun of %s %s on %s queued (attempt %d was %s; asked by %s)", job.repo, job.sha[:12],
                         job.arch, job.attempt, job.status.value if job.status else "?", by)
                queued += 1
        if queued:
            self.notify_work(*(chosen or (a.value for a in repo.architectures)))
            self.publisher.touch([(repo.name, commit)])
        return queued

    def cancel(self, repo_name: str, commit: str, archs: list[str], by: str) -> int:
        """Cancel a commit's unfinished jobs (archs empty: all); returns how many."""
        repo = self.repo(repo_name)
        check_commit(commit)
        chosen = [parse_arch(a).value for a in archs]
        ended = self.store.jobs.cancel(repo.name, commit, chosen, f"cancelled by {by}")
        for job in ended:
            log.info("cancelled %s %s on %s (by %s)", job.repo, job.sha[:12], job.arch, by)
        if ended:
            self.publisher.wake()  # the result files say `cancelled` at once
        return len(ended)

    def status(self, repo_name: str, commit: str, limit: int) -> StatusReport:
        """What `status` shows, for a client anywhere the secret is."""
        repo = self.repo(repo_name).name if repo_name else None
        if commit:
            check_commit_prefix(commit)
        if limit < 1:
            raise ProtocolError("a status limit is at least 1")
        return status_report(self.store, repo, commit or None, min(limit, MAX_STATUS_COMMITS),
                             self.config.dispatcher.heartbeat_timeout)

    def query(self, repo_name: str, commit: str) -> CommitStatus:
        status = commit_status(self.store, self.repo(repo_name).name, check_commit(commit))
        timeout = self.config.dispatcher.heartbeat_timeout
        waiting = sorted({a.arch for a in status.archs if not a.state.final
                          and self.presence.unattended(a.arch, timeout)})
        return dataclasses.replace(status, unattended=waiting) if waiting else status

    # --- runners -----------------------------------------------------------------------

    def register(self, name: str, msg: Register, previous: Optional[RunnerRow], peer: str) -> RunnerRow:
        check_runner(name)
        arch = parse_arch(msg.arch).value
        identity = self._identities.get(name)
        if identity is not None and identity.architectures and parse_arch(arch) not in identity.architectures:
            # A runner's own secret vouches for the architectures listed with it, no others.
            allowed = ", ".join(a.value for a in identity.architectures)
            raise NotAllowed(f"runner {name} may serve only {allowed} ([dispatcher.runners.{name}] architectures), "
                             f"not {arch}")
        now = time.time()
        runner = RunnerRow(name, arch, msg.host[:200], msg.machine[:50], msg.version[:50], msg.emulated,
                           msg.kernel[:100], now, now, msg.qemu[:100], msg.root[:200])
        elsewhere = None if previous is not None and previous.name == name else \
            self.presence.connected_elsewhere(name, runner.host)
        if elsewhere is not None:
            # Two runners under one name would take each other's leases and results.
            raise NotAllowed(f"runner name {name!r} is already connected from host {elsewhere!r}; give each "
                             "runner its own name (--name or runner.name)")
        if previous is not None:
            self.presence.left(previous.name)
        self.store.runners.register(runner)
        self.presence.arrived(runner)
        log.info("runner %s registered from %s: %s (%s%s), polyarch %s", name, peer, arch, msg.machine,
                 ", emulated" if msg.emulated else "", msg.version)
        self.notify_work(arch)
        return runner

    def runner_left(self, runner: RunnerRow) -> None:
        self.presence.left(runner.name)
        # A retry kept away from its failing runner may now have nobody else to run it.
        self.notify_work(runner.arch)

    def _last_heard(self, runner: str) -> float:
        """When `runner` was last heard from: now, if it is speaking."""
        return time.time() if self.speaking(runner) else self.presence.last_heard(runner)

    def heard(self, runner: Optional[RunnerRow]) -> RunnerRow:
        """Every request after REGISTER: the runner is alive."""
        if runner is None:
            raise NotAllowed("register first")
        self.presence.heard(runner.name)
        return runner

    def lease(self, runner: RunnerRow, wait: float) -> Optional[Job]:
        """The oldest queued job of the runner's arch, waiting up to `wait` s for one (on
        this thread: the socket server waits without one, through lease_now and the park)."""
        deadline = self.lease_deadline(wait)
        while not self.stopping.is_set():
            generation = self.generation
            job = self.lease_now(runner)
            if job is not None:
                return job
            with self._work:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._generation == generation:
                    self._work.wait(remaining)
        return None

    def lease_now(self, runner: RunnerRow) -> Optional[Job]:
        """The oldest queued job of the runner's arch, or None at once."""
        # A runner runs one job at a time: asking for another means it no longer runs the
        # one it holds (it restarted), and one connection can never hoard the queue.
        for gone in self.store.jobs.take_back(runner.name):
            log.warning("runner %s asked for new work while holding %s %s %s; that lease is taken back (%s)",
                        runner.name, gone.job.repo, gone.job.sha[:12], gone.job.arch,
                        "queued again" if gone.requeued else "no attempts left: error")
            self.publisher.wake()
        return self._claim_for(runner)

    def lease_ahead(self, runner: RunnerRow) -> Optional[Job]:
        """The job after the one `runner` runs, leased now (Lease(ahead=True)): only behind
        a short job (hub/ahead.py says why) and one ahead at a time; None at once otherwise."""
        held = self.store.jobs.held_by(runner.name)
        if len(held) != 1:
            return None
        running = self.store.jobs.by_lease(held[0])
        if running is None or not self.durations.short(running.repo, running.arch):
            return None
        return self._claim_for(runner)

    def _claim_for(self, runner: RunnerRow) -> Optional[Job]:
        while True:
            row = self.store.jobs.claim(runner, alone=not self.presence.others(runner.arch, runner.name))
            if row is None:
                return None
            job = self._job_for(runner, row)
            if job is not None:
                return job

    @staticmethod
    def lease_deadline(wait: float) -> float:
        return time.monotonic() + min(max(wait, 0.0), MAX_LEASE_WAIT)  # capped

    def _job_for(self, runner: RunnerRow, row: JobRow) -> Optional[Job]:
        """The Job message for a job just leased to `runner`; None when its repository is
        no longer configured (the job ends `error` instead)."""
        repo = self.config.repo(row.repo)
        if repo is None:
            self._finish_orphan(row.lease_id, row.repo)
            return None
        log.info("leased %s %s %s to %s (attempt %d)", row.repo, row.sha[:12], row.arch, runner.name, row.attempt)
        self.publisher.touch([(row.repo, row.sha)])
        return Job(lease_id=row.lease_id or "", repo=row.repo, url=repo.url, branch=row.branch,
                   commit=row.sha, arch=row.arch, attempt=row.attempt, test_command=repo.test_command,
                   timeout=repo.timeout,
                   timeout_factor=self.config.timeout_factor(parse_arch(row.arch), runner.emulated),
                   describe=not (row.author or row.subject), setup=repo.setup or "",
                   setup_key=list(repo.setup_key))

    def _finish_orphan(self, lease_id: Optional[str], repo: str) -> None:
        now = time.time()
        reason = f"repo {repo!r} is no longer in {self.config.path}"
        self.store.jobs.record_result(lease_id or "", JobResult(Status.ERROR, None, now, now, reason.encode() + b"\n",
                                                           reason=reason))
        self.publisher.wake()

    def heartbeat(self, runner: RunnerRow, msg: Heartbeat) -> None:
        """The lease goes on; output the heartbeat brings goes to the job's live log."""
        if msg.output_end < msg.output_start:
            raise ProtocolError(f"heartbeat output {msg.output_start}..{msg.output_end} is not a range")
        if not self.store.jobs.heartbeat(msg.lease_id, runner.name):
            raise LeaseLost("lease is no longer yours")
        if msg.output_end > msg.output_start:
            self.live.append(msg.lease_id, lambda: self._live_job(msg.lease_id), msg.output_start,
                             msg.output_end, msg.output)

    def _live_job(self, lease_id: str) -> Optional[tuple[JobKey, int]]:
        job = self.store.jobs.by_lease(lease_id)
        return (JobKey(job.repo, job.sha, job.arch), job.attempt) if job is not None else None

    # --- logs ------------------------------------------------------------------------------

    def read_log(self, repo_name: str, commit: str, arch_name: str, offset: int = 0, wait: float = 0.0,
                 source: Optional[LogSource] = None, attempt: int = 0) -> LogText:
        """A job's log from `offset`: the final one once published, else the live one,
        waiting up to `wait` s for something new. `source` and `attempt`, from an earlier
        answer, keep a follower on the file and the attempt it has been reading."""
        key = JobKey(self.repo(repo_name).name, check_commit(commit), parse_arch(arch_name).value)
        if offset < 0:
            raise ProtocolError("a log offset is >= 0")
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_LEASE_WAIT)
        while True:
            job = self._job(key)
            state = CellState.of(job.status or Status.ERROR) if job.state.final else \
                CellState.RUNNING if job.state == JobState.LEASED else CellState.QUEUED
            reply = self._log_text(key, job, state, offset, source, attempt)
            if reply.text or reply.done or self.stopping.is_set():
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reply
            self.live.wait(min(remaining, 0.25))  # output wakes it; a final state is polled

    def _job(self, key: JobKey) -> JobRow:
        for job in self.store.queries.jobs(key.repo, key.sha, 1):
            if job.sha == key.sha and job.arch == key.arch:
                return job
        raise UnknownName(f"no job of {key.repo} {key.sha[:12]} on {key.arch} (polyarch-dispatcher status lists "
                          "the recent ones)")

    def _log_text(self, key: JobKey, job: JobRow, state: CellState, offset: int, source: Optional[LogSource],
                  attempt: int) -> LogText:
        def text(source: LogSource, data: bytes, done: bool, of: int = job.attempt, reason: str = job.reason):
            cut = len(data) if done else whole_characters(data)
            return LogText(repo=key.repo, commit=key.sha, arch=key.arch, attempt=of, source=source, offset=offset,
                           end=offset + cut, text=data[:cut].decode("utf-8", "replace"), done=done, state=state,
                           reason=reason, runner=job.runner or "")

        live = self.live.current(key)
        if source is None:
            source = LogSource.FINAL if job.state.settled else LogSource.LIVE if live is not None and \
                live.attempt == job.attempt else LogSource.NONE
            if source == LogSource.NONE:
                return text(LogSource.NONE, b"", False)
        if source == LogSource.FINAL:
            data = read_from(result_path(self.config.dispatcher.results_dir, File.LOG, repo=key.repo,
                                         commit=key.sha, arch=key.arch), offset, LOG_READ_MOST)
            return text(LogSource.FINAL, data, len(data) < LOG_READ_MOST)
        followed = attempt or job.attempt
        if live is None or live.attempt != followed or source == LogSource.NONE:
            # Its live log is closed, or a later attempt runs: the follower starts over.
            return text(LogSource.LIVE, b"", live is None or live.attempt != followed, of=followed,
                        reason="" if followed == job.attempt else f"attempt {followed} ended; attempt {job.attempt} "
                                                                  f"is {state.value}")
        data = live.read(offset, LOG_READ_MOST)
        return text(LogSource.LIVE, data, not data and state.final and job.attempt == live.attempt)

    def record_result(self, runner: RunnerRow, msg: Result) -> tuple[int, str, Optional[Job]]:
        """(1, what happened, next job) for a result recorded or retried; (0, ...) for a
        late or duplicate one, acknowledged and dropped. The JUnit is parsed here, once.
        With msg.next_job, the runner's next job (or None: none queued) is leased in the
        same transaction as the result is recorded."""
        junit = msg.junit.encode("utf-8", "replace")
        info = msg.commit_info
        if info is not None and info.parent and not is_commit(info.parent):
            info = dataclasses.replace(info, parent="")  # a description is a courtesy: the result still counts
        job, claimed = self.store.jobs.record_and_claim(msg.lease_id, JobResult(
            Status.of(msg.status), msg.exit_code, msg.started_at, msg.finished_at, msg.log.encode("utf-8", "replace"),
            msg.log_truncated, junit, parse_junit(junit) if junit else None, msg.reason, info),
            runner=runner.name, claimer=runner if msg.next_job else None,
            alone=not self.presence.others(runner.arch, runner.name))
        following = self._job_for(runner, claimed) if claimed is not None else None
        if job is not None:
            self.durations.add(job.repo, job.arch, msg.finished_at - msg.started_at)
        if job is None and msg.next_job:
            following = self.lease_now(runner)  # a late result: still, the runner wants work
        if job is not None and job.state == JobState.QUEUED:
            log.info("%s %s %s %s on %s (attempt %d); retry %d of %d, on another runner if one is connected",
                     job.repo, job.sha[:12], job.arch, msg.status.value, runner.name, job.attempt, job.retries,
                     self.store.policy.retry_failed.get(job.repo, 0))
            self.notify_work(job.arch)
            return 1, "recorded; the job runs again (retry_failed)", following
        if job is None:
            late = self.store.jobs.by_lease(msg.lease_id)
            what = f"{late.repo} {late.sha[:12]} {late.arch}" if late else "an unknown lease"
            if late is not None and late.runner and late.runner != runner.name:
                log.warning("refused a result from %s for %s: that lease is %s's", runner.name, what, late.runner)
                return 0, "that lease belongs to another runner: discarded", following
            log.warning("dropped late or duplicate result from %s for %s", runner.name, what)
            return 0, "late or duplicate result: discarded", following
        self.publisher.wake()  # files follow; the result is already durable
        return 1, "recorded", following

    def release(self, runner: RunnerRow, lease_id: str, reason: str) -> None:
        job = self.store.jobs.release(lease_id, reason, runner=runner.name)
        if job is None:
            return
        if job.state == JobState.RECORDED:
            log.error("%s %s %s: %s", job.repo, job.sha[:12], job.arch, job.reason)
            self.publisher.wake()
        else:
            log.info("runner %s handed back %s %s %s: %s", runner.name, job.repo, job.sha[:12], job.arch,
                     reason or "stopping")
        self.notify_work(job.arch)

    # --- periodic work -------------------------------------------------------------------

    def periodic(self) -> None:
        """Every SERVICE_INTERVAL: expire leases, wake the publisher, flush presence
        (upkeep.py)."""
        self.upkeep.tick()

    # --- for the HTTP API -----------------------------------------------------------------

    def health(self) -> dict:
        queue, _ = self.store.queries.job_counts()
        return {"queued": sum(queue.values()), "runners": sum(self.presence.count_by_arch().values())}

    def metrics_text(self) -> str:
        queue, jobs = self.store.queries.job_counts()
        return self.metrics.render(queue, jobs, self.presence.count_by_arch())
