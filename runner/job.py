"""One job on the runner: checkout, the repository's settings, its cached setup, the
test command, and the result; run in a worker thread while the main thread heartbeats."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from dispatcher.common.errors import ConfigError
from dispatcher.common.files import atomic_write, read_regular
from dispatcher.common.git import FetchStopped
from dispatcher.common.states import Reported
from dispatcher.wire.protocol import Job, Result

from .checkout import CheckoutError
from .envcache import setup_key
from .execute import Execution, Outcome, Process, job_env
from .jobenv import job_environment
from .live import LiveOutput
from .junit import with_junit
from .repoconf import JobSettings, settings_for
from .sandbox import JobPaths
from .warm import Warm

if TYPE_CHECKING:
    from .service import Runner

log = logging.getLogger("polyarch.runner")

JUNIT_LIMIT = 4 * 1024 * 1024
RUNNING_MARKER = ".running"
NOT_FOUND = 127  # the shell's exit code for a command it cannot find
STARTED_WAIT = 1.0  # s: the most the runner's own work for the next job waits for a command's exec


@dataclasses.dataclass(frozen=True)
class Ready:
    """A job checked out and handed to the job user: what its commands need of that."""

    chosen: JobSettings
    paths: JobPaths


@dataclasses.dataclass(frozen=True)
class Armed:
    """A job leased ahead whose jail is ready (runner/warm.py): its command is one
    release away. Its cgroups were made for it."""

    warm: Warm
    cgroups: list[Path]


class JobWork:
    """Checkout, settings and execution of one job, in a worker thread.

    A job leased ahead (dispatcher/hub/ahead.py) is checked out and handed over while the
    job before it runs (`prepare_ahead`, in the other worktree slot), and, when it has no
    setup, its jail armed, so that `start` only releases its command when that job ends."""

    def __init__(self, runner: Runner, job: Job, slot: int = 0) -> None:
        self.runner, self.job = runner, job
        self.slot = slot  # the worktree slot it runs in (checkout.py)
        # Its command runs (or the job is over): the runner may lease the next job ahead.
        self.launched = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._preparing: Optional[threading.Thread] = None
        self._prepare_error: Optional[BaseException] = None
        self._ready: Optional[Ready] = None
        self._armed: Optional[Armed] = None
        self._unready = ""  # why it could not be checked out ("" and not ready: the runner's stop cut it short)
        self._cleaned = False
        self.folder = runner.jobs_dir / job.lease_id
        # Says which process group to kill if the runner is killed while the job runs (one
        # per job: a job ahead starts before the one before it is cleaned up).
        self.marker = runner.jobs_dir / f"{job.lease_id}{RUNNING_MARKER}"
        self.src: Optional[Path] = None  # the repository's worktree, once checked out
        self.result: Optional[Result] = None
        self._aborted = threading.Event()
        self._process: Optional[Process] = None
        self._lock = threading.Lock()
        self.chosen_limit = 0.0
        self.steps: dict[str, float] = {}  # step -> seconds, for the per-job timing log line
        self.live = LiveOutput()  # the setup's and the test's output, for the live log

    def prepare_ahead(self) -> None:
        self._preparing = threading.Thread(target=self._prepare_caught, name=f"ahead-{self.job.lease_id}",
                                           daemon=True)
        self._preparing.start()

    def _prepare_caught(self) -> None:
        began = time.time()
        try:
            self._prepare()
            if self._ready is not None and not self._ready.chosen.setup:
                self._arm(self._ready)
        except BaseException as exc:  # noqa: BLE001 - raised again in the job's own thread, which reports it
            self._prepare_error = exc
        self.steps["ahead"] = time.time() - began

    def _arm(self, ready: Ready) -> None:
        """Give the test command to a jail now, to be released when this job's turn comes
        (with a setup the first command is the setup's, which a cached setup may skip:
        those jobs start as usual)."""
        runner, sandbox = self.runner, self.runner.sandbox
        assert sandbox is not None  # noqa: S101 - made by Runner.run before any job
        if not sandbox.isolated or runner.spares is None:
            return
        env = sandbox.environment(job_environment(os.environ, runner.settings.pass_env, self._variables(ready.paths)))
        cgroups = sandbox.cgroups_for(self.job.lease_id)
        warm: Optional[Warm] = None
        try:
            warm = runner.spares.take()
            warm.arm(sandbox.argv(with_junit(ready.chosen.test_command), ready.paths, warm.report_fd, cgroups),
                     job_env(env, runner.settings.job_tty))
        except BaseException:
            if warm is not None:
                warm.discard()
            sandbox.forget(cgroups)
            raise
        self._armed = Armed(warm, cgroups)
        runner.spares.refill()

    @property
    def armed(self) -> bool:
        """Leased ahead and ready to release: its jail waits for its turn."""
        return self._armed is not None

    def _disarm(self) -> None:
        """An armed jail that will not be released: it exits unrun; its cgroups go."""
        armed, self._armed = self._armed, None
        if armed is not None:
            armed.warm.discard()
            assert self.runner.sandbox is not None  # noqa: S101 - narrowing
            self.runner.sandbox.forget(armed.cgroups)

    def _variables(self, paths: JobPaths) -> dict[str, str]:
        """The POLYARCH_* variables of the job's commands."""
        job = self.job
        return dict(POLYARCH_REPO=job.repo, POLYARCH_COMMIT=job.commit, POLYARCH_ARCH=job.arch,
                    POLYARCH_BRANCH=job.branch, POLYARCH_JUNIT=str(paths.out / "junit.xml"),
                    POLYARCH_LEASE=job.lease_id, POLYARCH_ATTEMPT=str(job.attempt))

    def drop(self) -> None:
        """A job leased ahead that will not run here (its lease is gone, or handed back):
        its checkout is let finish (it leaves a worktree the next checkout there reuses,
        nothing having run in it), and its job folder goes."""
        if self._preparing is not None:
            self._preparing.join()
        self._disarm()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"job-{self.job.lease_id}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def abort(self) -> None:
        with self._lock:
            self._aborted.set()
            if self._process is not None:
                self._process.request_stop()

    def run(self) -> None:
        """The job, however its files fare: a job folder deleted or replaced, or a full disk,
        ends the job `error` with the reason. (Handing it back would bring it straight
        back to this runner, over and over.)"""
        started = time.time()
        try:
            self._run(started)
        except Exception as exc:  # whatever the job did to its files, the runner goes on
            if self._process is not None:
                self._process.kill_group()
            if self.result is None and not self._aborted.is_set():
                log.exception("job %s %s failed on the runner's side", self.job.repo, self.job.commit[:12])
                self.result = _error(self.job, started, f"the runner could not run the job: "
                                                        f"{type(exc).__name__}: {exc}")
        finally:
            self._disarm()  # armed, but the job ended before its command (stopped, or an error)
            self.live.end()
            self.launched.set()

    def _prepare(self) -> None:
        """Check out, read the repository's settings, hand the worktree to the job user:
        sets _ready, or _unready to why not."""
        job = self.job
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.runner.finish_cleaning(self.slot)
            self.src = self.runner.mirrors.checkout(job.repo, job.url, job.commit, self.slot)
            chosen = settings_for(self.src, job.arch, JobSettings(job.test_command, job.timeout,
                                                                  job.timeout_factor, setup=job.setup,
                                                                  setup_key=tuple(job.setup_key)))
        except FetchStopped:
            return  # the runner's own stop cut the fetch short: no result, the job is handed back
        except (CheckoutError, ConfigError) as exc:
            self._unready = str(exc)
            return
        sandbox = self.runner.sandbox
        assert sandbox is not None  # noqa: S101 - made by Runner.run before any job
        paths = JobPaths(checkout=self.src, out=self.folder / "out", stage=self.folder / "stage",
                         mirror=self.runner.mirrors.mirror_path(job.repo), url=job.url)
        sandbox.hand_over(paths)
        self._ready = Ready(chosen, paths)

    def _run(self, started: float) -> None:
        job, settings, sandbox = self.job, self.runner.settings, self.runner.sandbox
        assert sandbox is not None  # noqa: S101 - made by Runner.run before any job
        if self._preparing is not None:  # leased ahead: checked out meanwhile
            self._preparing.join()
            if self._prepare_error is not None:
                raise self._prepare_error
        else:
            self._prepare()
        self.steps["checkout"] = time.time() - started
        if self._ready is None:
            if self._unready:
                self.result = _error(job, started, self._unready)
            return
        chosen, paths = self._ready.chosen, self._ready.paths
        self.chosen_limit = chosen.limit  # the setup's limit and the test's, each
        junit_path = paths.out / "junit.xml"
        polyarch = self._variables(paths)
        setup_log = ""
        if chosen.setup:
            prepared = self._setup(chosen, paths, polyarch, started)
            if prepared is None:
                return  # the setup failed (self.result says why) or the job was stopped
            env_dir, setup_log = prepared
            polyarch["POLYARCH_ENV"] = str(env_dir)
            paths = paths.with_env(env_dir, readonly=True)
        env = sandbox.environment(job_environment(os.environ, settings.pass_env, polyarch))
        if "POLYARCH_ENV" in polyarch and Path(polyarch["POLYARCH_ENV"], "bin").is_dir():
            env["PATH"] = f"{polyarch['POLYARCH_ENV']}/bin:{env['PATH']}"
        self.steps["prepare"] = time.time() - started - self.steps["checkout"]
        spawned = time.time()
        ran = self._execute(with_junit(chosen.test_command), paths, env, "output.log", started)
        # From the spawn: the command, the crash marker, the command's exit seen.
        self.steps["run"] = time.time() - spawned
        if ran is None:
            return
        ex, limit = ran
        output = setup_log + ex.output.decode("utf-8", "replace")
        if ex.refused or limit:
            self.result = _error(job, started, ex.refused or limit, output)
            return
        if ex.outcome == Outcome.TIMED_OUT:
            status, reason = Reported.TIMEOUT, (f"timed out after {chosen.limit:g} s "
                                                f"({chosen.limit_reason(job.arch)}); process group killed")
        elif ex.exit_code == NOT_FOUND:
            # The shell's "not found": a program missing on this runner (or in this root),
            # not the code failing there; no portability alarm.
            status, reason = Reported.ERROR, f"command not found (exit 127): {_last_line(output)}"
        else:
            status = Reported.PASSED if ex.exit_code == 0 else Reported.FAILED
            reason = "" if ex.exit_code == 0 else f"test command exited with {ex.exit_code}"
        junit = read_regular(junit_path, JUNIT_LIMIT).decode("utf-8", "replace")
        info = self.runner.mirrors.describe(job.repo, job.commit) if job.describe else None
        self.result = Result(lease_id=job.lease_id, status=status, exit_code=ex.exit_code,
                             started_at=started, finished_at=ex.finished_at, log=output,
                             log_truncated=ex.truncated, junit=junit, reason=reason, commit_info=info)

    def _setup(self, chosen: JobSettings, paths: JobPaths, polyarch: dict[str, str],
               started: float) -> Optional[tuple[Path, str]]:
        """The setup's folder, made now or by an earlier job, and what to log of it; None
        when it failed (self.result is then `error`) or the job was stopped."""
        runner, job = self.runner, self.job
        sandbox, cache = runner.sandbox, runner.envs
        assert sandbox is not None and self.src is not None  # noqa: S101 - narrowing
        key = setup_key(job.repo, job.arch, runner.root_digest, chosen.setup, self.src, chosen.setup_key)
        ready = cache.ready(key)
        if ready is not None:
            return ready, f"[polyarch: setup reused (key {key[:12]})]\n"
        env_dir = cache.begin(key, sandbox.owner)
        env = sandbox.environment(job_environment(os.environ, runner.settings.pass_env,
                                                  {**polyarch, "POLYARCH_ENV": str(env_dir)}))
        began = time.time()
        ran = self._execute(chosen.setup, paths.with_env(env_dir, readonly=False), env, "setup.log", started)
        self.steps["setup"] = time.time() - began
        if ran is None:
            cache.discard(key)
            return None
        ex, limit = ran
        output = ex.output.decode("utf-8", "replace")
        if ex.outcome != Outcome.EXITED or ex.exit_code != 0 or ex.refused or limit:
            cache.discard(key)  # never kept: the next job tries again
            why = ex.refused or limit or ("timed out" if ex.outcome == Outcome.TIMED_OUT else f"exit {ex.exit_code}")
            self.result = _error(job, started, f"setup failed ({why}): {_last_line(output)}",
                                 f"[polyarch: setup (key {key[:12]})]\n{output}")
            return None
        cache.done(key)
        return env_dir, (f"[polyarch: setup ran (key {key[:12]}, {time.time() - began:.1f} s)]\n{output}"
                         "[polyarch: setup done; the test command follows]\n")

    def _execute(self, command: str, paths: JobPaths, env: dict[str, str], log_name: str,
                 started: float) -> Optional[tuple[Execution, str]]:
        """Run one command of the job (the setup or the test) to its end: its execution and
        the limit it reached (or ""); None when stopped or it could not start (then
        self.result says why)."""
        sandbox, settings = self.runner.sandbox, self.runner.settings
        assert sandbox is not None and self.src is not None  # noqa: S101 - narrowing
        with self._lock:
            if self._aborted.is_set():
                return None
            # The test command of a job armed ahead (only one without a setup is): its jail
            # waits with these very arguments.
            armed, self._armed = self._armed, None
            cgroups = armed.cgroups if armed else sandbox.cgroups_for(self.job.lease_id)
            launch = (lambda fd: sandbox.argv(command, paths, fd, cgroups)) if sandbox.isolated else None
            try:
                warm = armed.warm if armed else (self.runner.spares.take() if launch is not None and self.runner.spares
                                                 else None)
                self._process = Process(command, self.src, env, self.folder / log_name, settings.log_limit,
                                        self.runner.guard, launch, live=self.live, tty=settings.job_tty,
                                        tty_owner=sandbox.owner, warm=warm)
            except OSError as exc:
                sandbox.verdict(cgroups)
                self.result = _error(self.job, started, f"cannot start {command!r}: {exc}")
                return None
        # What the runner does for the next job (start a jail, lease and check out a job
        # ahead, clean the last worktree) waits for this command's exec: on a 2-core
        # machine it delayed the command by several milliseconds.
        self._process.wait_started(STARTED_WAIT)
        if warm is not None and self.runner.spares is not None:
            self.runner.spares.refill()  # the next job's jail, ready long before its answer brings it
        self.launched.set()
        # Not fsynced: it only has to outlive the runner process, not the machine (after a
        # power cut no job is left running to kill).
        atomic_write(self.marker, json.dumps({"pgid": self._process.pgid,
                                                     "lease_id": self.job.lease_id}).encode(), durable=False)
        ex = self._process.wait(self.chosen_limit, settings.kill_grace)
        limit = sandbox.verdict(cgroups)
        return (ex, limit) if ex.outcome != Outcome.KILLED else None

    def start_cleanup(self) -> None:
        """Start cleaning the worktree; it runs while the dispatcher records the result and
        leases the next job, and is finished before the next checkout. Started once the
        result is on its way: started before, its fork and git's work delayed the result
        by about a millisecond on a 2-core machine; started after the answer, the next
        job's checkout (which the answer brings) waited for all of it."""
        if self.src is not None and self.slot not in self.runner.cleaning:
            try:
                self.runner.cleaning[self.slot] = self.runner.mirrors.start_clean(self.job.repo, self.slot)
            except OSError as exc:  # no process to clean with: the next job gets a fresh worktree
                log.warning("cannot clean the worktree of %s (%s); removing it", self.job.repo, exc)
                self.runner.mirrors.discard(self.job.repo, self.slot)

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self.marker.unlink(missing_ok=True)
        self.start_cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("[polyarch:")]
    return lines[-1][:300] if lines else "(no output)"


def _error(job: Job, started: float, reason: str, output: str = "") -> Result:
    log.error("%s %s on %s: %s", job.repo, job.commit[:12], job.arch, reason)
    return Result(lease_id=job.lease_id, status=Reported.ERROR, exit_code=None, started_at=started,
                  finished_at=time.time(), log=output + f"\n[polyarch: {reason}]\n" if output else reason + "\n",
                  reason=reason)


