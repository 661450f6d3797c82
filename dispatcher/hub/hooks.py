"""Hooks: a repository's shell commands run on its commits' events.

Four events, each a [[repos]] key: `on_queued` when a commit's jobs are queued (once per
commit, with the architectures queued), `on_result` after each final result,
`on_failure` after each final result that is not a pass, and `on_commit_done` once every
architecture of a commit is final. A hook gets the event and the commit's fields in its
environment (POLYARCH_EVENT, POLYARCH_COMMIT, POLYARCH_STATUS, ...; see `HookPlan`), and
POLYARCH_HOOK_ID. Each hook owed is recorded in the state in the transaction that queues
the jobs or marks the result published (store/hook_runs.py) and marked done once it ran,
so it runs at least once across restarts. Hooks run on a few worker threads of their
own, each in its own process group, killed with the group after hook_timeout; the hooks
of one commit run one after the other, in the order of their events, so that a forge
never sees a "pending" posted after the final status. A failing, hanging or missing hook
is logged and changes nothing else: the result is already in test_results/ when a hook
starts, and a full hook queue leaves the newest hooks pending in the state (with a
warning) rather than hold up the dispatcher; they are offered again with the next
results, or at the next start.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Callable, Mapping, Optional

from dispatcher.common.config import Config, RepoConfig
from dispatcher.common.process import popen_exited, stop_group
from dispatcher.common.states import Overall, Status
from dispatcher.hub.store.hook_runs import HookRun, Owed
from dispatcher.hub.store.rows import JobRow
from dispatcher.results.layout import File, path

log = logging.getLogger("polyarch.hooks")

WORKERS = 4
HOOK_TERM_WAIT = 1.0
QUEUE_LIMIT = 1000


class Event(str, enum.Enum):
    """A hook's event: its value is the [[repos]] key that names its command."""

    QUEUED = "on_queued"
    RESULT = "on_result"
    FAILURE = "on_failure"
    COMMIT_DONE = "on_commit_done"


class HookPlan:
    """Which hooks an event owes, with their environment: the one place that builds it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.results_dir = config.dispatcher.results_dir
        self.public_url = config.dispatcher.public_url

    def queued(self, repo: str, sha: str, branch: str, archs: list[str]) -> list[Owed]:
        """A commit's jobs on `archs` were just queued (POLYARCH_ARCHS)."""
        return self._owed(repo, [Event.QUEUED], self._commit(repo, sha, branch) | {
            "POLYARCH_ARCHS": " ".join(archs), "POLYARCH_OVERALL": Overall.PENDING.value})

    def result(self, job: JobRow, overall: str) -> list[Owed]:
        """A final result; `overall`: the commit's status after it (pending while others run)."""
        status = job.status or Status.ERROR
        where = dict(repo=job.repo, commit=job.sha, arch=job.arch)
        return self._owed(job.repo, [Event.RESULT] + ([] if status.passing else [Event.FAILURE]),
                          self._commit(job.repo, job.sha, job.branch) | {
            "POLYARCH_ARCH": job.arch, "POLYARCH_STATUS": status.value, "POLYARCH_OVERALL": overall,
            "POLYARCH_RUNNER": job.runner or "", "POLYARCH_ATTEMPT": str(job.attempt),
            "POLYARCH_RESULT_FILE": str(path(self.results_dir, File.RESULT, **where)),
            "POLYARCH_LOG_FILE": str(path(self.results_dir, File.LOG, **where))})

    def commit_done(self, repo: str, sha: str, branch: str, statuses: Mapping[str, Status]) -> list[Owed]:
        """Every architecture of the commit is final: `statuses`, arch -> status."""
        return self._owed(repo, [Event.COMMIT_DONE], self._commit(repo, sha, branch) | {
            "POLYARCH_ARCHS": " ".join(sorted(statuses)),
            "POLYARCH_STATUSES": " ".join(f"{a}={s.value}" for a, s in sorted(statuses.items())),
            "POLYARCH_OVERALL": Overall.of(statuses.values()).value})

    def wanted(self, repo: str) -> bool:
        """Whether the repository has any hook at all (else nothing need be worked out)."""
        cfg = self.config.repo(repo)
        return cfg is not None and any(getattr(cfg, e.value) is not None for e in Event)

    def _owed(self, repo: str, events: list[Event], env: dict[str, str]) -> list[Owed]:
        cfg: Optional[RepoConfig] = self.config.repo(repo)
        if cfg is None:
            return []
        return [(e.value, command, cfg.hook_timeout, env | {"POLYARCH_EVENT": e.value}) for e in events
                if (command := getattr(cfg, e.value)) is not None]

    def _commit(self, repo: str, sha: str, branch: str) -> dict[str, str]:
        page = path(self.results_dir, File.COMMIT_PAGE, repo=repo, commit=sha)
        url = f"{self.public_url}/{page.relative_to(page.parents[2]).as_posix()}" if self.public_url else ""
        return {"POLYARCH_REPO": repo, "POLYARCH_COMMIT": sha, "POLYARCH_BRANCH": branch,
                "POLYARCH_PAGE": str(page), "POLYARCH_PAGE_URL": url,
                "POLYARCH_SUMMARY_FILE": str(path(self.results_dir, File.SUMMARY, repo=repo, commit=sha))}


class HookRunner:
    """Runs recorded hooks; `done(id, exit code)` is told when each has run. The hooks of
    one commit run in the order offered, one at a time; different commits' in parallel."""

    def __init__(self, cwd: Path, done: Callable[[int, Optional[int]], None], workers: int = WORKERS) -> None:
        self.cwd = cwd
        self._done = done
        self._queue: queue.Queue[Optional[HookRun]] = queue.Queue()
        self._lock = threading.Lock()
        self._held = 0  # hooks offered and not yet run: queued, running or waiting their turn
        # commit -> its hooks offered after the one now queued or running.
        self._behind: dict[tuple[str, str], collections.deque[HookRun]] = {}
        self._threads = [threading.Thread(target=self._work, name=f"hook-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def offer(self, runs: list[HookRun]) -> int:
        """Queue these runs; returns the highest id queued (the rest stay pending)."""
        last = 0
        with self._lock:
            for run in runs:
                if self._held >= QUEUE_LIMIT:
                    log.warning("%d hooks already waiting (are they hanging?): hook %d and later stay pending in "
                                "the state, offered again with the next results or at the next start",
                                QUEUE_LIMIT, run.id)
                    break
                self._held += 1
                last = run.id
                behind = self._behind.get(run.commit)
                if behind is not None:
                    behind.append(run)
                else:
                    self._behind[run.commit] = collections.deque()
                    self._queue.put(run)
        return last

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            try:
                code = run_hook(run, cwd=self.cwd)
                self._done(run.id, code)
            except Exception:  # a hook worker must outlive any one hook (and a state it cannot write)
                log.exception("%s hook %d failed to run", run.event, run.id)
            finally:
                self._next_of(run.commit)

    def _next_of(self, commit: tuple[str, str]) -> None:
        with self._lock:
            self._held -= 1
            behind = self._behind[commit]
            if behind:
                self._queue.put(behind.popleft())
            else:
                del self._behind[commit]


def run_hook(hook: HookRun, cwd: Path) -> Optional[int]:
    """Run one hook to its end or its timeout; returns its exit code (None: killed)."""
    env = hook.env
    what = (f"{hook.event} hook for {env.get('POLYARCH_REPO')} {env.get('POLYARCH_COMMIT', '')[:12]} "
            f"{env.get('POLYARCH_ARCH')} (id {hook.id})")
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", hook.command], cwd=cwd,
                                env={**os.environ, **env, "POLYARCH_HOOK_ID": str(hook.id)},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        log.error("%s could not start: %s", what, exc)
        return None
    try:
        output, _ = proc.communicate(timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
            output = b""
        log.error("%s killed after hook_timeout = %g s: %s", what, hook.timeout, _tail(output))
        return None
    if proc.returncode != 0:
        log.error("%s exited with %d: %s", what, proc.returncode, _tail(output))
    else:
        log.info("%s done", what)
    return proc.returncode


def _kill_group(proc: subprocess.Popen) -> None:
    # Past its hook_timeout a hook had its time: asked once, briefly, then killed.
    stop_group(proc.pid, popen_exited(proc), term_wait=HOOK_TERM_WAIT)


def _tail(output: bytes, limit: int = 300) -> str:
    text = output.decode("utf-8", "replace").strip().replace("\n", " | ")
    return text[-limit:] if text else "(no output)"
