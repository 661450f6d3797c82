"""Run one test command: its own process group, a timeout, an output cap."""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

REAPER = Path(__file__).with_name("reaper.py")


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


class CappedLog:
    """Keeps the head and the tail of a stream within `limit` bytes, marking the cut."""

    def __init__(self, path: Path, limit: int) -> None:
        self.file = open(path, "wb")
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
        self.file.close()
        return self.dropped > 0


class Process:
    """A running test command; `stop` may be called from another thread."""

    def __init__(self, command: str, cwd: Path, env: Mapping[str, str], log_path: Path, log_limit: int) -> None:
        self.started_at = time.time()
        self._stop_requested = threading.Event()
        self.log = CappedLog(log_path, log_limit)
        full_env = dict(env)
        full_env["POLYARCH_RUNNER_PID"] = str(os.getpid())
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(REAPER), command], cwd=cwd, env=full_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pgid = self.proc.pid
        self._reader = threading.Thread(target=self._pump, name="output", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None  # noqa: S101 - narrowing: started with stdout=PIPE
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self.log.write(chunk)

    def request_stop(self) -> None:
        self._stop_requested.set()

    def wait(self, timeout: float, kill_grace: float) -> Execution:
        """Wait for the command; on timeout or stop request, TERM the group, then KILL."""
        deadline = self.started_at + timeout
        outcome = Outcome.EXITED
        while True:
            try:
                self.proc.wait(timeout=min(0.1, max(0.0, deadline - time.time())))
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stop_requested.is_set():
                outcome = Outcome.KILLED
            elif time.time() >= deadline:
                outcome = Outcome.TIMED_OUT
            else:
                continue
            self._terminate(kill_grace)
            break
        finished = time.time()
        # Whatever the command left behind in its group (daemons, sleeps) goes now.
        self._signal_group(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        truncated = self.log.close()
        code = self.proc.returncode if outcome == Outcome.EXITED else None
        return Execution(outcome, code, self.started_at, finished, truncated)

    def _terminate(self, grace: float) -> None:
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
