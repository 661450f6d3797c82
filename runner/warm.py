"""A jail started before the job that will use it, waiting for its orders.

A jail is a Python process (runner/jail.py): its start with ctypes costs 15-18 ms on a
2-core VM, most of what polyarch adds to an emulated job. So the runner keeps one jail
started ahead: its own process group, its terminal (or pipe) for the output, its report
pipe, blocked reading its orders. A job hands it the arguments and the environment it
would have had on its command line and gets it running at once; the next one starts in
the background once the job is done. It is still the runner's child, so waiting for it,
killing its group and the guard work exactly as for a jail started on demand.

Orders come in two steps. `arm` sends them: the jail builds the job's namespaces, file
system view and user, then waits on its go pipe just before the exec. `release` lets it
exec. A job started at once does both in a row. A job leased ahead is armed while the
job before it runs, so between two short jobs only the exec is left (the namespaces and
mounts took 3-10 ms of the switch on a busy 2-core machine).

An idle or armed one carries the runner's POLYARCH_RUNNER_PID (the guard's mark) and
reads end-of-file when the runner is gone (its orders, or its go pipe), so none outlives
the runner and an armed job never runs without its release.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import threading
from typing import Callable, Mapping, Optional

log = logging.getLogger("polyarch.runner")


@dataclasses.dataclass
class Warm:
    """One jail waiting for its orders."""

    proc: subprocess.Popen[bytes]
    output: int  # the runner's end of the jail's terminal (or pipe)
    report: int  # the read end of its report pipe (why it could not isolate a job)
    report_fd: int  # the report pipe's number inside the jail (its --report)
    orders: int  # the write end of its orders; end-of-file makes an idle jail exit
    go: int  # the write end of its go pipe; end-of-file makes an armed jail exit unrun
    go_fd: int  # the go pipe's number inside the jail (its --go)
    prefix: tuple[str, ...]  # the jail's own start (python -I -S jail.py), which the orders leave out
    armed: bool = False

    def arm(self, argv: list[str], env: Mapping[str, str]) -> None:
        """Hand it the job: `argv` is the command line a jail started on demand would have
        had (the jail's own start, then its arguments); `env`, the job's environment. It
        makes everything ready and waits for `release`."""
        if argv[:len(self.prefix)] != list(self.prefix):
            raise ValueError(f"not a jail command line: {argv[:len(self.prefix)]}")
        args = ["--go", str(self.go_fd), *argv[len(self.prefix):]]
        fields = [str(len(args)), *args, *(f"{k}={v}" for k, v in env.items())]
        data = b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.orders, view):]
        finally:
            self._close(self.orders)
            self.orders = -1
        self.armed = True

    def release(self) -> None:
        """Let the armed jail exec the job's command."""
        try:
            os.write(self.go, b"g")
        finally:
            self._close(self.go)
            self.go = -1

    @staticmethod
    def _close(fd: int) -> None:
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        """Never released: it reads end-of-file and exits without running anything (and
        its descriptors go)."""
        self._close(self.orders)
        self._close(self.go)
        self.orders = self.go = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.output)
        os.close(self.report)


class Spares:
    """Keeps one Warm jail ready: `prefix --orders FD`, started with `start(argv, fds)`
    (the process and the runner's end of its output)."""

    def __init__(self, prefix: list[str],
                 start: Callable[[list[str], tuple[int, ...]], tuple[subprocess.Popen[bytes], int]]) -> None:
        self.prefix = tuple(prefix)
        self._start = start
        self._lock = threading.Lock()
        self._ready: Optional[Warm] = None
        self._starting: Optional[threading.Thread] = None
        self._closed = False

    def take(self) -> Warm:
        """The jail started ahead, or one started now (the next is `refill`'s)."""
        with self._lock:
            thread = self._starting
        if thread is not None:
            thread.join()
        with self._lock:
            warm, self._ready = self._ready, None
        if warm is None or warm.proc.poll() is not None:
            if warm is not None:
                log.warning("the jail started ahead exited (%s); starting one now", warm.proc.returncode)
                warm.discard()
            warm = self._new()
        return warm

    def refill(self) -> None:
        """Start the next jail in the background, unless one is ready or starting. A job
        calls it once its own jail runs its command: the next job comes in the answer to
        this one's result, so a jail started between jobs was waited for by every job."""
        with self._lock:
            if self._closed or self._ready is not None or (self._starting and self._starting.is_alive()):
                return
            self._starting = threading.Thread(target=self._fill, name="warm-jail", daemon=True)
            self._starting.start()

    def _fill(self) -> None:
        try:
            warm = self._new()
        except OSError as exc:  # the next job starts one itself, and says why if it fails again
            log.warning("cannot start a jail ahead of the next job: %s", exc)
            return
        with self._lock:
            if self._closed:
                warm.discard()
            else:
                self._ready = warm

    def _new(self) -> Warm:
        report_r, report_w = os.pipe()
        orders_r, orders_w = os.pipe()
        go_r, go_w = os.pipe()
        os.set_blocking(report_r, False)
        try:
            proc, output = self._start([*self.prefix, "--orders", str(orders_r)], (report_w, orders_r, go_r))
        except BaseException:
            for fd in (report_r, orders_w, go_w):
                os.close(fd)
            raise
        finally:
            for fd in (report_w, orders_r, go_r):
                os.close(fd)
        return Warm(proc, output, report_r, report_w, orders_w, go_w, go_r, self.prefix)

    def close(self) -> None:
        """Discard the jail ready; one still starting discards itself (_fill sees closed)."""
        with self._lock:
            self._closed = True
            thread, warm, self._ready = self._starting, self._ready, None
        if warm is not None:
            warm.discard()
        if thread is not None:
            thread.join(timeout=10)
