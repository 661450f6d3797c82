"""on_result / on_failure: a repository's commands run after each final result.

A hook gets the result file's path and the result's key fields in its environment
(POLYARCH_RESULT_FILE, POLYARCH_STATUS, ...; see `hook_env`), and POLYARCH_HOOK_ID. Each
hook owed is recorded in the state with its result (store/hook_runs.py) and marked done
once it ran, so it runs at least once across restarts. Hooks run on a few worker
threads of their own, each in its own process group, killed with the group after
hook_timeout. A failing, hanging or missing hook is logged and changes nothing else:
the result is already in test_results/ when a hook starts, and a full hook queue leaves
the newest hooks pending in the state (with a warning) rather than hold up the
dispatcher; they are offered again with the next results, or at the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional

from dispatcher.common.process import popen_exited, stop_group
from dispatcher.common.states import Status
from dispatcher.hub.store.hook_runs import HookRun

log = logging.getLogger("polyarch.hooks")

WORKERS = 4
HOOK_TERM_WAIT = 1.0
QUEUE_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class Notification:
    repo: str
    commit: str
    branch: str
    arch: str
    status: str
    overall: str  # the commit's summary status after this result: pending, passed or failed
    runner: str
    result_file: Path
    log_file: Path
    summary_file: Path
    page: Path  # the commit's dashboard page


@dataclasses.dataclass(frozen=True)
class Hook:
    event: str  # on_result or on_failure
    command: str
    timeout: float


def hook_env(n: Notification) -> dict[str, str]:
    return {"POLYARCH_REPO": n.repo, "POLYARCH_COMMIT": n.commit,
            "POLYARCH_BRANCH": n.branch, "POLYARCH_ARCH": n.arch, "POLYARCH_STATUS": n.status,
            "POLYARCH_OVERALL": n.overall, "POLYARCH_RUNNER": n.runner, "POLYARCH_RESULT_FILE": str(n.result_file),
            "POLYARCH_LOG_FILE": str(n.log_file), "POLYARCH_SUMMARY_FILE": str(n.summary_file),
            "POLYARCH_PAGE": str(n.page)}


def hooks_for(on_result: Optional[str], on_failure: Optional[str], timeout: float, status: str) -> list[Hook]:
    out = [Hook("on_result", on_result, timeout)] if on_result else []
    if on_failure and not Status(status).passing:
        out.append(Hook("on_failure", on_failure, timeout))
    return out


class HookRunner:
    """Runs recorded hooks; `done(id, exit code)` is told when each has run."""

    def __init__(self, cwd: Path, done: Callable[[int, Optional[int]], None], workers: int = WORKERS) -> None:
        self.cwd = cwd
        self._done = done
        self._queue: queue.Queue[Optional[HookRun]] = queue.Queue(QUEUE_LIMIT)
        self._threads = [threading.Thread(target=self._work, name=f"hook-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def offer(self, runs: list[HookRun]) -> int:
        """Queue these runs; returns the highest id queued (the rest stay pending)."""
        last = 0
        for run in runs:
            try:
                self._queue.put_nowait(run)
                last = run.id
            except queue.Full:
                log.warning("%d hooks already waiting (are they hanging?): hook %d and later stay pending in the "
                            "state, offered again with the next results or at the next start", QUEUE_LIMIT, run.id)
                break
        return last

    def stop(self) -> None:
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break

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
