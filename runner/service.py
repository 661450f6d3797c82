"""The runner daemon: connect out, register, lease, run, heartbeat, report.

The main thread owns the connection (leases, heartbeats, results); a job runs in a
worker thread. A result is spooled to disk before it is sent and removed only when the
dispatcher acknowledged it, so a dispatcher that is down when a job ends loses nothing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher import __version__
from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection, Dispatchers
from dispatcher.common.config import Config, dispatcher_addresses
from dispatcher.common.errors import ConfigError, MessageTooLarge, SetupError, ProtocolError, RemoteError
from dispatcher.common.names import Arch
from dispatcher.common.sdnotify import Watchdog, notify
from dispatcher.wire.tls import for_client
from dispatcher.common.daemon import StopRequest
from dispatcher.wire.errors import ErrorCode
from dispatcher.wire.protocol import Ack, Heartbeat, Job, Lease, Register, Release, Result, Role
from dispatcher.wire.frames import encode

from .checkout import Cleaning, Mirrors
from .execute import Guard, job_env, start_group
from .envcache import EnvCache
from .job import RUNNING_MARKER, STARTED_WAIT, JobWork
from .live import CHUNK, INTERVAL, LIMIT, Piece
from .sandbox import JAIL_START, Root, Sandbox
from .warm import Spares
from .spool import Spool

log = logging.getLogger("polyarch.runner")

LEASE_WAIT = 5.0  # bounds how long an idle runner takes to notice SIGTERM
MAX_BACKOFF = 5.0


class Runner:
    def __init__(self, config: Config, arch: Arch, name: str, root: Optional[Root] = None) -> None:
        self.config = config
        self.root = root
        self.settings = config.runner
        self.arch = arch
        self.name = name
        self.secret = load_secret(config.token_for("runner"))
        self.tls = for_client(config, "runner")
        # One folder per runner name: runners sharing a config on one host never touch
        # each other's mirrors, checkouts or spooled results.
        work = self.settings.work_dir / name
        self.work = work
        self.jobs_dir = work / "jobs"
        self.legacy_marker = work / "current-job.json"  # where a runner before jobs ahead kept its one marker
        self.stop = StopRequest()
        self.mirrors = Mirrors(work / "mirrors", work / "checkouts", self.settings.fetch_timeout,
                               stop=lambda: self.stop.now(self.settings.stop_grace))
        self.spool = Spool(work / "outbox")
        self.envs = EnvCache(work / "envs", self.settings.cache_limit)
        # What a cached setup depends on besides the repository: the root's packages, or
        # (natively) this host's architecture.
        self.root_digest = f"root-{root.digest}" if root is not None else f"native-{platform.machine()}"
        self.conn: Optional[Connection] = None
        self.dispatchers = Dispatchers(lambda: dispatcher_addresses(config, "runner"))
        self.heartbeat_interval = 1.0
        self.watchdog = Watchdog()
        self.guard = Guard()
        self.cleaning: dict[int, Cleaning] = {}  # worktree slot -> the `git clean` its next checkout finishes first
        self.sandbox: Optional[Sandbox] = None  # made at start: its checks are the runner's to fail
        self.spares: Optional[Spares] = None  # a jail started ahead of each job, when jobs are isolated
        self.next_job: Optional[Job] = None  # leased with the last result's answer, not started yet
        self.ahead: Optional[JobWork] = None  # leased while the current job runs, checked out meanwhile
        self.started: Optional[JobWork] = None  # the job ahead, started as the one before it ended
        self.plain_results = False  # the dispatcher is older than Result.next_job
        self.ahead_ok = False  # the dispatcher leases a job ahead (Lease.ahead)
        # Where the jobs run: this machine, or a root of another architecture (what its
        # jobs see of uname is the root's, as on a real host of that architecture).
        self.emulated = root is not None and root.emulated
        self.machine = root.machine if root is not None else platform.machine()

    # --- lifecycle ----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """The first request stops leasing, the second (or stop_grace later) the job too."""
        self.stop.install()

    def lock_work(self) -> None:
        """Take the work folder for this process: a second runner under the same name on
        this host would share its worktrees and kill its jobs as a crash's leftovers."""
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.work / ".lock", "a+")  # noqa: SIM115 - held until the process exits
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            pid = self._lock_file.read().strip()
            self._lock_file.close()
            holder = f"pid {pid}" if pid.isdigit() else "another process"
            raise SetupError(f"runner {self.name} is already running on this host ({holder} holds "
                             f"{self.work / '.lock'}); give this one another name (--name)") from None
        self._lock_file.truncate(0)
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def run(self) -> None:
        self.lock_work()
        self.sandbox = Sandbox(self.config, self.name, self.root)
        self.sandbox.prepare_root()
        if self.sandbox.isolated:
            self.spares = jail_spares(self.sandbox.owner, self.config.runner.job_tty)
            self.spares.refill()
        self.clean_after_crash()
        self.envs.clean_unfinished()
        log.info("runner %s (%s, %s%s) starting; work dir %s", self.name, self.arch.value, self.machine,
                 f" in {self.root.path}" if self.root else "", self.work)
        self.guard.start()
        backoff = 0.1
        notify("READY=1")
        # A job started as the one before it ended is followed to its end, stop or not.
        while not self.stop.is_set() or self.started is not None:
            self.watchdog.ping()
            try:
                work, self.started = self.started, None
                if work is None:
                    self._connect()
                    self._flush_spool()
                    work = self._next_work()
                backoff = 0.1
                if work is not None:
                    self._follow(work)
            except (OSError, ProtocolError, RemoteError, ConfigError) as exc:
                self._disconnect()
                log.warning("dispatcher unavailable (%s); retrying in %.1f s", exc, backoff)
                self.stop.wait(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                # Never back off past a heartbeat period: a spooled result must arrive before
                # the dispatcher, restarted, gives up on our lease.
                backoff = min(backoff * 2, MAX_BACKOFF, self.heartbeat_interval)
        if self.next_job is not None:
            self._release(self.next_job, "runner stopping")
            self.next_job = None
        if self.ahead is not None:
            self.ahead.drop()
            self._release(self.ahead.job, "runner stopping")
            self.ahead = None
        if self.conn is not None or self.spool.pending():
            try:
                self._connect()
                self._flush_spool()
            except (OSError, ProtocolError, RemoteError, ConfigError) as exc:
                log.warning("results left in %s for the next start: %s", self.spool.folder, exc)
        self._disconnect()
        self.finish_cleaning()
        if self.spares is not None:
            self.spares.close()
        self.guard.close()
        log.info("runner %s stopped", self.name)

    def clean_after_crash(self) -> None:
        """Kill what a killed runner left running and remove its job folders and worktrees."""
        markers = sorted(self.jobs_dir.glob("*" + RUNNING_MARKER)) if self.jobs_dir.is_dir() else []
        for marker in [self.legacy_marker, *markers]:
            if not marker.exists():
                continue
            try:
                info = json.loads(marker.read_text())
                _kill_leftover(int(info["pgid"]), str(info["lease_id"]))
            except (ValueError, KeyError, OSError) as exc:
                log.warning("ignoring unreadable %s: %s", marker, exc)
            marker.unlink(missing_ok=True)
        if self.jobs_dir.exists():
            log.info("removing job folders left by a previous run in %s", self.jobs_dir)
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.mirrors.prune_all()

    def finish_cleaning(self, slot: Optional[int] = None) -> None:
        """Wait for the `git clean` of worktree `slot` (None: of every slot)."""
        for each in ([slot] if slot is not None else list(self.cleaning)):
            cleaning = self.cleaning.pop(each, None)
            if cleaning is not None:
                cleaning.finish()

    # --- connection ---------------------------------------------------------------------

    def _connect(self) -> Connection:
        if self.conn is None:
            conn, welcome = self.dispatchers.connect(self._register)
            features = welcome.message.split() if isinstance(welcome, Ack) else []
            if "next_job" not in features and not self.plain_results:
                log.info("the dispatcher does not take next_job (an older version); leasing each job apart")
            self.plain_results = "next_job" not in features
            self.ahead_ok = "ahead" in features
            self.conn, self.heartbeat_interval = conn, conn.heartbeat_interval
            log.info("connected to dispatcher at %s", conn.address)
        return self.conn

    def _register(self, address) -> tuple[Connection, object]:
        conn = Connection(address, Role.RUNNER, self.name, self.secret, tls=self.tls)
        try:
            return conn, conn.request(Register(arch=self.arch.value, version=__version__, host=socket.gethostname(),
                                               machine=self.machine, emulated=self.emulated,
                                               kernel=platform.release(), qemu=self.root.qemu if self.root else "",
                                               root=self.root.described if self.root else ""))
        except BaseException:
            conn.close()
            raise

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _request(self, msg, timeout: float = 30.0, sent: Optional[Callable[[], None]] = None):
        conn = self._connect()
        try:
            return conn.request(msg, timeout=timeout, sent=sent)
        except (OSError, ProtocolError):
            self._disconnect()
            raise

    def _flush_spool(self, ask_next: str = "", sent: Optional[Callable[[], None]] = None) -> None:
        """Send every spooled result; the one for lease `ask_next` asks for the next job
        too, which its answer brings (self.next_job), and runs `sent` once it is on its way."""
        for result in self.spool.pending():
            wants = (result.lease_id == ask_next and not self.stop.is_set() and not self.plain_results
                     and self.ahead is None and self.started is None)
            reply = self._request(dataclasses.replace(result, next_job=True) if wants else result,
                                  sent=sent if result.lease_id == ask_next else None)
            if not isinstance(reply, Ack):
                raise ProtocolError(f"dispatcher answered a result with {reply.KIND.value}")
            if not reply.created:
                log.warning("dispatcher discarded our result for lease %s: %s", result.lease_id, reply.message)
            self.spool.remove(result.lease_id)
            if reply.job is not None:
                if wants and self.next_job is None:
                    self.next_job = reply.job
                else:  # not asked for (an old answer?): the lease is not ours to keep
                    self._release(reply.job, "not asked for")

    # --- one job ------------------------------------------------------------------------

    def _next_work(self) -> Optional[JobWork]:
        """The next job, started: the one leased ahead (its job before ended without a
        result), the one the last result's answer brought, or one leased now."""
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            return self._start(ahead)
        job, self.next_job = self.next_job, None
        if job is None:  # else the last result's answer brought it: no Lease round trip
            reply = self._request(Lease(wait=LEASE_WAIT), timeout=LEASE_WAIT + 30)
            job = reply if isinstance(reply, Job) else None
        return self._start(JobWork(self, job)) if job is not None else None

    def _start(self, work: JobWork) -> Optional[JobWork]:
        job = work.job
        if self.stop.is_set():
            work.drop()
            self._release(job, "runner stopping")
            return None
        log.info("running %s %s on %s (attempt %d)", job.repo, job.commit[:12], job.arch, job.attempt)
        work.start()
        return work

    def _follow(self, work: JobWork) -> None:
        """Heartbeat a running job (with its live output) to its end, and deliver its result."""
        job = work.job
        lost = False
        # New output goes out at once after a quiet spell, then at most every INTERVAL; a
        # silent job still beats once per heartbeat_interval.
        tick = min(INTERVAL, self.heartbeat_interval)
        next_beat = time.monotonic() + self.heartbeat_interval
        sent_at = -INTERVAL
        ahead_beat = next_beat  # the job leased ahead beats on its own clock: output resets next_beat
        asking = self.ahead_ok and self.ahead is None and self.next_job is None
        while work.running:
            self.watchdog.ping()
            if self.stop.now(self.settings.stop_grace):
                work.abort()  # no result comes back: the job is handed back below
                work.join(tick)
                continue
            if asking and work.launched.is_set():
                asking = False
                self._lease_ahead(work)
            now = time.monotonic()
            if self.ahead is not None and now >= ahead_beat:
                self._beat_ahead()
                ahead_beat = now + self.heartbeat_interval
            pending = work.live.has_output
            due = min(next_beat, sent_at + INTERVAL) if pending else next_beat
            if now < due:
                if asking and not work.launched.is_set():
                    work.launched.wait(min(due - now, tick))  # set once the command runs, or the job ended
                elif pending or work.live.ended:
                    work.join(min(due - now, tick))
                else:
                    work.live.wait_for_write(min(due - now, tick))
                continue
            sent_at, next_beat = now, now + self.heartbeat_interval
            if not self._heartbeat(job, work, work.live.take()):
                lost = True
                work.abort()
        try:
            if lost:
                return
            if work.result is None:
                self._release(job, "runner stopping")
                return
            # The last lines reach the live log before the result: a follower reads all of
            # them, then the final status.
            for _ in range(LIMIT // CHUNK + 1):
                piece = work.live.take(final=True)
                if piece is None or not self._heartbeat(job, work, piece) or work.live.taken:
                    break
            delivering = time.time()
            if self.ahead is not None and not self.stop.is_set():
                # The job ahead starts once this result is safe on disk, while it is sent.
                self._deliver(work.result, kept=lambda: self._start_ahead(work))
            else:
                # The worktree's `git clean` runs while the dispatcher records the result and
                # leases the next job, so that job's checkout does not wait for it.
                self._deliver(work.result, sent=work.start_cleanup)
            work.steps["deliver"] = time.time() - delivering
        finally:
            cleaning = time.time()
            work.cleanup()
            work.steps.setdefault("cleanup", time.time() - cleaning)
            if self.spares is not None:
                self.spares.refill()
            if work.steps:
                log.info("timing %s %s: %s", job.repo, job.commit[:12],
                         ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in work.steps.items()))

    @property
    def _beat_timeout(self) -> float:
        """How long a request made while a job runs (a heartbeat) may take: two periods and
        some slack, well within the dispatcher's heartbeat_timeout."""
        return self.heartbeat_interval * 2 + 5

    def _lease_ahead(self, work: JobWork) -> None:
        """Ask for the job after this one (the dispatcher says whether this one is short
        enough for that) and start checking it out in the other worktree slot."""
        try:
            reply = self._request(Lease(wait=0, ahead=True), timeout=self._beat_timeout)
        except (OSError, ProtocolError, RemoteError, ConfigError) as exc:
            log.warning("could not lease a job ahead (%s); the next one comes with this one's result", exc)
            return
        if not isinstance(reply, Job):
            return
        log.info("leased %s %s on %s ahead (attempt %d); checking it out while %s runs", reply.repo,
                 reply.commit[:12], reply.arch, reply.attempt, work.job.commit[:12])
        self.ahead = JobWork(self, reply, slot=1 - work.slot)
        self.ahead.prepare_ahead()

    def _beat_ahead(self) -> None:
        """The heartbeat of the job leased ahead: its lease is kept like a running job's."""
        assert self.ahead is not None  # noqa: S101 - narrowing
        job = self.ahead.job
        try:
            self._request(Heartbeat(job.lease_id), timeout=self._beat_timeout)
        except RemoteError as exc:
            if exc.code == ErrorCode.LEASE_LOST:
                log.warning("the job leased ahead, %s %s, is no longer ours (cancelled, or its lease expired); "
                            "dropping it", job.repo, job.commit[:12])
                self.ahead.drop()
                self.ahead = None
        except (OSError, ProtocolError, ConfigError):
            pass  # the running job's heartbeat says so, and reconnects

    def _start_ahead(self, work: JobWork) -> None:
        """This job's result is on disk: start the job ahead, then, once its command runs,
        send the result and clean up after this one (in the other worktree slot)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            armed = ahead.armed  # else still being checked out: the result goes now, not after it
            self.started = self._start(ahead)
            if self.started is not None and armed:
                self.started.launched.wait(STARTED_WAIT)
        cleaning = time.time()
        work.cleanup()
        work.steps["cleanup"] = time.time() - cleaning

    def _heartbeat(self, job: Job, work: JobWork, piece: Optional[Piece]) -> bool:
        """One heartbeat, with the job's new output if any; False when the lease is lost."""
        msg = Heartbeat(job.lease_id) if piece is None else \
            Heartbeat(job.lease_id, output=piece.text, output_start=piece.start, output_end=piece.end)
        try:
            self._request(msg, timeout=self._beat_timeout)
        except RemoteError as exc:
            if exc.code == ErrorCode.LEASE_LOST:
                log.warning("lease of %s %s lost (expired, or the job was cancelled); stopping the job",
                            job.repo, job.commit[:12])
                return False
            log.warning("heartbeat refused (%s); the job goes on", exc)
        except (OSError, ProtocolError, ConfigError) as exc:
            log.warning("heartbeat failed (%s); the job goes on, reconnecting", exc)
        else:
            if piece is not None:
                work.live.acknowledged(piece)
        return True

    def _release(self, job: Job, reason: str) -> None:
        try:
            self._request(Release(job.lease_id, reason), timeout=5)
            log.info("handed back %s %s: %s", job.repo, job.commit[:12], reason)
        except (OSError, ProtocolError, RemoteError, ConfigError) as exc:
            log.warning("could not hand back %s %s (%s); its lease will expire", job.repo, job.commit[:12], exc)

    def _deliver(self, result: Result, sent: Optional[Callable[[], None]] = None,
                 kept: Optional[Callable[[], None]] = None) -> None:
        """Spool the result, call `kept` (it is safe on disk), send it and call `sent` as it
        goes; kept for a later try if the dispatcher does not answer."""
        result = _fit(result)
        try:
            self.spool.put(result)
        except OSError as exc:
            # Our own disk is full or failing: no copy to keep, so send it now, as it is.
            log.warning("cannot keep the result in %s (%s); sending it without a copy", self.spool.folder, exc)
            try:
                reply = self._request(result)
                if isinstance(reply, Ack) and not reply.created:
                    log.warning("dispatcher discarded our result for lease %s: %s", result.lease_id, reply.message)
            except (OSError, ProtocolError, RemoteError, ConfigError) as sent:
                log.error("result for lease %s lost with the connection (%s); the lease expires and the job runs "
                          "again", result.lease_id, sent)
            return
        if kept is not None:
            kept()
        try:
            self._flush_spool(ask_next=result.lease_id, sent=sent)
        except (OSError, ProtocolError, RemoteError, ConfigError) as exc:
            log.warning("result kept in %s until the dispatcher is back: %s", self.spool.folder, exc)


def _fit(result: Result) -> Result:
    """Shrink the log until the message fits the protocol's frame limit."""
    while True:
        try:
            encode(result)
            return result
        except MessageTooLarge:
            half = len(result.log) // 2
            result = dataclasses.replace(result, log=result.log[:half] + "\n[polyarch: log cut to fit]\n",
                                         log_truncated=True)


def _kill_leftover(pgid: int, lease_id: str) -> None:
    """Kill a crashed runner's job group, if it really is that job (pids get reused)."""
    try:
        environ = Path(f"/proc/{pgid}/environ").read_bytes()
    except OSError:
        return
    if f"POLYARCH_LEASE={lease_id}".encode() in environ.split(b"\0"):
        log.warning("killing process group %d left running by a previous run", pgid)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve(config: Config, arch: Arch, name: str, root: Optional[Root] = None) -> None:
    runner = Runner(config, arch, name, root)
    runner.install_signal_handlers()
    runner.run()


def jail_spares(owner: Optional[tuple[int, int]], tty: bool) -> Spares:
    """Jails started ahead of their jobs, as Process would start one (runner/warm.py). An
    idle one's environment is only PATH and the guard's mark: the job's comes with it."""
    env = job_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, tty=False)
    return Spares(list(JAIL_START), lambda argv, fds: start_group(argv, "/", env, fds, tty, owner))
