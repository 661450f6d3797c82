"""Progress bars for the long operations people start by hand: building a root file
system (`polyarch-runner rootfs build`) and a repository's first mirror
(`polyarch-observer once`). Daemons pass no sink and log as before.

A long command's output is read as it comes, split on both newlines and carriage
returns (git redraws its progress line with '\\r'), and each line is offered to a
parser that turns it into (step, done, total).
"""

from __future__ import annotations

import re
import subprocess
import threading
from typing import IO, Callable, Iterator, Optional

from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from dispatcher.common.process import popen_exited, stop_group

# (key, step, done, total): `key` names the bar (a repository, a root file system).
Sink = Callable[[str, str, int, int], None]

_GIT = re.compile(r"(Counting objects|Compressing objects|Receiving objects|Resolving deltas|Updating files):"
                  r"\s+\d+% \((\d+)/(\d+)\)")


def git_progress(line: str) -> Optional[tuple[str, int, int]]:
    """git's `--progress` lines: 'Receiving objects:  45% (450/1000), 1.2 MiB | ...'."""
    m = _GIT.search(line)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def lines(stream: IO[bytes]) -> Iterator[str]:
    """Lines of a byte stream as they arrive, '\\r' counting as a line end."""
    buffer = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buffer += chunk
        parts = re.split(rb"[\r\n]", buffer)
        buffer = parts.pop()
        for part in parts:
            if part:
                yield part.decode("utf-8", "replace")
    if buffer:
        yield buffer.decode("utf-8", "replace")


def run(cmd: list[str], parse: Callable[[str], Optional[tuple[str, int, int]]], report: Callable[[str, int, int], None],
        timeout: Optional[float] = None, cwd: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
        keep: Callable[[str], bool] = lambda line: False) -> tuple[int, list[str]]:
    """Run `cmd` (stdout and stderr merged), reporting parsed progress; returns its exit
    code (-9 when killed at `timeout`) and its last 20 lines, after the first 10 lines
    `keep` picks (a tool's error lines, which a long teardown would push out)."""
    # Its own group, so that a timeout or a failure stops what it started too (mmdebstrap
    # runs apt, dpkg and qemu under it).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=env, start_new_session=True)
    timer = threading.Timer(timeout, stop_group, (proc.pid, popen_exited(proc))) if timeout else None
    if timer:
        timer.start()
    tail: list[str] = []
    kept: list[str] = []
    try:
        assert proc.stdout is not None  # noqa: S101 - PIPE above
        for line in lines(proc.stdout):
            if keep(line) and len(kept) < 10:
                kept.append(line)
            else:
                tail = (tail + [line])[-20:]
            parsed = parse(line)
            if parsed is not None:
                report(*parsed)
        return proc.wait(), kept + tail
    finally:
        if timer:
            timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.poll() is None:  # a parser or a reader failed, or Ctrl-C: do not leave the command behind
            stop_group(proc.pid, popen_exited(proc))


class Bars:
    """One rich progress bar per key, on stderr; a context manager."""

    def __init__(self, transient: bool = False) -> None:
        self.progress = Progress(TextColumn("{task.fields[key]}"), TextColumn("{task.description}"), BarColumn(),
                                 TaskProgressColumn(), TimeElapsedColumn(), transient=transient)
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, step: str, done: int, total: int) -> None:
        with self._lock:
            if key not in self._tasks:
                self._tasks[key] = self.progress.add_task(step, total=total, key=key)
            self.progress.update(self._tasks[key], description=step, completed=done, total=total)

    def __enter__(self) -> "Bars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
