"""Run one test command: its own process group, a timeout, an output cap."""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

from dispatcher.common.process import signal_group, stop_group

from .live import LiveOutput
from .warm import Warm

GUARD = Path(__file__).with_name("guard.py")


class Outcome(str, enum.Enum):
    EXITED = "exited"
    TIMED_OUT = "timed-out"
    KILLED = "killed"  # stopped by the runner itself (lease lost, shutdown)


@dataclasses.dataclass(frozen=True)
class Execution:
    outcome: Outcome
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    truncated: bool
    output: bytes = b""  # what the log file holds, read through the runner's own descriptor
    refused: str = ""  # why the sandbox could not start the command (then it never ran)


class CappedLog:
    """Keeps the head and the tail of a stream within `limit` bytes, marking the cut.

    The file is read back through the descriptor it was written with, never by its path:
    a test may replace the path with a FIFO or a link, and the runner must not wait on it."""

    def __init__(self, path: Path, limit: int) -> None:
        # Unbuffered: whoever reads the file while the job runs sees what it wrote so far.
        self.file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.limit = limit
        self.output = b""
        self.head_left = limit // 2
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.tail_limit = limit - limit // 2
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if self.head_left:
            part = data[: self.head_left]
            self.file.write(part)
            self.head_left -= len(part)
            data = data[len(part):]
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size > self.tail_limit:
            first = self.tail.popleft()
            excess = self.tail_size - self.tail_limit
            if len(first) > excess:
                self.tail.appendleft(first[excess:])
                self.dropped += excess
                self.tail_size -= excess
            else:
                self.dropped += len(first)
                self.tail_size -= len(first)

    def close(self) -> bool:
        if self.dropped:
            self.file.write(f"\n[polyarch: output truncated: {self.dropped} bytes dropped here]\n".encode())
        self.file.write(b"".join(self.tail))
        self.file.flush()
        self.file.seek(0)
        self.output = self.file.read(self.limit + 4096) or b""
        self.file.close()
        return self.dropped > 0


class Guard:
    """The runner's one guard process (guard.py): it kills the jobs if the runner dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._groups: set[int] = set()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None and self._proc.stdin is not None:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass  # the pipe to a dead guard: a flush of unsent bytes fails
            # Its own session: a terminal's Ctrl-C or a group signal must not reach it.
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", str(GUARD), str(os.getpid())],
                                          stdin=subprocess.PIPE, start_new_session=True)
            for pgid in self._groups:  # a guard that died (OOM killer) is replaced, told everything
                self._send(f"+{pgid}")
        return self._proc

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None  # noqa: S101 - narrowing
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def _tell(self, line: str) -> None:
        with self._lock:
            proc = self._started()
            try:
                self._send(line)
            except (BrokenPipeError, OSError):
                proc.wait()
                self._started()

    def start(self) -> None:
        with self._lock:
            self._started()

    def watch(self, pgid: int) -> None:
        self._groups.add(pgid)
        self._tell(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._groups.discard(pgid)
        self._tell(f"-{pgid}")

    def close(self) -> None:
        """Stop the guard (a clean runner exit; the jobs have ended already)."""
        with self._lock:
            if self._proc is not None:
                self._groups.clear()
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                self._proc.wait()
                self._proc = None


class Process:
    """A running test command; `stop` may be called from another thread.

    `launch`, given a descriptor the launcher may write a refusal to, returns the command
    line that runs `command` (runner/sandbox.py's jail); without it, `/bin/sh -c`.

    The command's output goes to a pseudo-terminal (`tty`, owned by `tty_owner`), as
    Buildbot's usePTY does: C's stdio and Python then flush each line, so the live log
    shows a line the moment it is printed instead of when a 4-8 KiB buffer fills. The
    terminal passes bytes through untouched (no CR added) and TERM is `dumb`, so tools
    print no colour codes; without `tty`, a pipe."""

    def __init__(self, command: str, cwd: Path, env: Mapping[str, str], log_path: Path, log_limit: int,
                 guard: Guard, launch: Optional[Callable[[int], list[str]]] = None,
                 live: Optional[LiveOutput] = None, tty: bool = False,
                 tty_owner: Optional[tuple[int, int]] = None, warm: Optional[Warm] = None) -> None:
        self.started_at = time.time()  # for the result, which people read
        self._began = time.monotonic()  # for the timeout, which a clock step must not move
        self._stop_requested = threading.Event()
        self._exited = threading.Event()
        self.log = CappedLog(log_path, log_limit)
        self.live = live
        full_env = job_env(env, tty)
        self._report = -1
        if warm is not None and launch is not None:
            # Its terminal, report pipe and process group were made when it started; a job
            # leased ahead was armed (its namespaces and mounts made) while the one before ran.
            try:
                if not warm.armed:
                    warm.arm(launch(warm.report_fd), full_env)
                warm.release()
            except BaseException:
                warm.discard()
                raise
            self.proc, self._output, self._report = warm.proc, warm.output, warm.report
        else:
            self.proc, self._output = self._spawn(command, cwd, full_env, launch, tty, tty_owner)
        self.pgid = self.proc.pid
        self._guard = guard
        guard.watch(self.pgid)
        self._reader = threading.Thread(target=self._pump, name="output", daemon=True)
        self._reader.start()
        # A blocking wait in its own thread: Popen.wait(timeout) polls with sleeps up to
        # 50 ms, which a job that takes 2 ms would pay in full.
        self._waiter = threading.Thread(target=self._wait_exit, name="waitpid", daemon=True)
        self._waiter.start()

    def _spawn(self, command: str, cwd: Path, env: dict[str, str], launch: Optional[Callable[[int], list[str]]],
               tty: bool, tty_owner: Optional[tuple[int, int]]) -> tuple[subprocess.Popen[bytes], int]:
        argv, fds = ["/bin/sh", "-c", command], ()
        if launch is not None:
            self._report, report_w = os.pipe()
            os.set_blocking(self._report, False)
            argv, fds = launch(report_w), (report_w,)
        try:
            return start_group(argv, cwd, env, fds, tty, tty_owner)
        finally:
            for fd in fds:
                os.close(fd)

    def _wait_exit(self) -> None:
        # WNOWAIT: learn of the exit but leave the shell a zombie, so its pid (the group's
        # id) cannot be reused before `wait` has killed what is left of the group.
        while True:
            try:
                os.waitid(os.P_PID, self.pgid, os.WEXITED | os.WNOWAIT)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        self._exited.set()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._output, 65536)
            except InterruptedError:
                continue
            except OSError:  # EIO: a terminal's last writer closed it (a pipe says EOF)
                break
            if not chunk:
                break
            self.log.write(chunk)
            if self.live is not None:
                self.live.write(chunk)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def wait(self, timeout: float, kill_grace: float) -> Execution:
        """Wait for the command; on timeout or stop request, TERM the group, then KILL."""
        deadline = self._began + timeout
        outcome = Outcome.EXITED
        while True:
            if self._exited.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
                break
            if self._stop_requested.is_set():
                outcome = Outcome.KILLED
            elif time.monotonic() >= deadline:
                outcome = Outcome.TIMED_OUT
            else:
                continue
            self._terminate(kill_grace)
            break
        finished = time.time()
        # Whatever the command left behind in its group (daemons, sleeps) goes now.
        self._signal_group(signal.SIGKILL)
        self.proc.wait()  # reaps the shell; the group's id may be reused from here on
        self._guard.forget(self.pgid)
        self._reader.join(timeout=5)
        if not self._reader.is_alive():
            os.close(self._output)  # else a leftover holds the other end: the reader keeps it
        truncated = self.log.close()
        refused = self._refusal()
        code = None
        if outcome == Outcome.EXITED:
            # A shell killed by a signal reads as 128 + signal number, as in a shell.
            code = self.proc.returncode if self.proc.returncode >= 0 else 128 - self.proc.returncode
        return Execution(outcome, code, self.started_at, finished, truncated, self.log.output, refused)

    def wait_started(self, timeout: float) -> None:
        """Until the jail has exec'd the command or given up (either closes its report
        pipe), at most `timeout` s; at once without a jail. The runner's own work for the
        next job waits for this: on a small machine it would delay the command's start."""
        if self._report < 0:
            return
        poller = select.poll()
        poller.register(self._report, select.POLLIN | select.POLLHUP)
        poller.poll(timeout * 1000)

    def _refusal(self) -> str:
        if self._report < 0:
            return ""
        try:
            return os.read(self._report, 4096).decode("utf-8", "replace").strip()
        except BlockingIOError:
            return ""
        finally:
            os.close(self._report)
            self._report = -1

    def kill_group(self) -> None:
        """Kill everything the command started, now (the runner gave up on the job)."""
        self._signal_group(signal.SIGKILL)

    def _terminate(self, grace: float) -> None:
        stop_group(self.pgid, lambda t: self._exited.wait(timeout=t), term_wait=grace, kill_wait=0)

    def _signal_group(self, sig: int) -> None:
        signal_group(self.pgid, sig)


# A terminal invites colour codes and pagers; a log wants neither.
TTY_ENV = {"TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat"}


def job_env(env: Mapping[str, str], tty: bool) -> dict[str, str]:
    """A command's environment: the job's, the guard's mark (see guard.py), and TTY_ENV
    when its output is a terminal."""
    out = {**env, "POLYARCH_RUNNER_PID": str(os.getpid())}
    return {**out, **TTY_ENV} if tty else out


def start_group(argv: list[str], cwd: Path | str, env: Mapping[str, str], fds: tuple[int, ...], tty: bool,
                tty_owner: Optional[tuple[int, int]]) -> tuple[subprocess.Popen[bytes], int]:
    """`argv` in a new session (its own process group), its output to a new terminal or
    pipe; returns the process and the runner's end of its output."""
    output, sink = _terminal(tty_owner) if tty else os.pipe()
    try:
        return subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=sink, start_new_session=True), output
    except BaseException:
        os.close(output)
        raise
    finally:
        os.close(sink)


def _terminal(owner: Optional[tuple[int, int]]) -> tuple[int, int]:
    """A pseudo-terminal for the job's output: (the runner's end, the job's end)."""
    ours, theirs = os.openpty()
    try:
        attrs = termios.tcgetattr(theirs)
        attrs[1] &= ~termios.OPOST  # bytes as written: no "\n" -> "\r\n"
        termios.tcsetattr(theirs, termios.TCSANOW, attrs)
        if owner is not None:
            # The job may reopen its output (/dev/stdout, tee /dev/stderr) as its own user.
            os.fchown(theirs, *owner)
    except BaseException:
        os.close(ours)
        os.close(theirs)
        raise
    return ours, theirs
