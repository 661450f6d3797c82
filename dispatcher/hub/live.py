"""Live logs: a running job's output as its runner's heartbeats bring it.

Each running job's output is appended to test_results/<repo>/<commit>/<arch>.log.part
(for readers of files) through a descriptor this module keeps open, and clients read it
through that same descriptor by offset. The publisher removes the path when it writes
the final <arch>.log; the descriptor outlives that for GRACE seconds, so a follower
still reads the last lines and then learns the final status, without a race.

Memory is one small record per running job; the file stops growing at
dispatcher.live_log_limit, saying so (the final log keeps runner.log_limit's rule).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher.results.layout import File, path as result_path

log = logging.getLogger("polyarch.dispatcher")

GRACE = 30.0  # seconds a finished job's live log stays readable by followers
MAX_PIECE = 1 << 20  # a heartbeat's output beyond this is cut (a runner sends 64 KiB)


@dataclasses.dataclass(frozen=True)
class JobKey:
    repo: str
    sha: str
    arch: str


class LiveLog:
    """One attempt's live output: its file and how far the runner's stream reached."""

    def __init__(self, key: JobKey, lease_id: str, attempt: int, path: Path, limit: int, resume_at: int = 0) -> None:
        """`resume_at` > 0: the lease moved here from another dispatcher on the same state
        (it died), which wrote the runner's stream up to there into this same file (one
        shared results folder): the file goes on rather than starting again."""
        self.key, self.lease_id, self.attempt, self.path, self.limit = key, lease_id, attempt, path, limit
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags | (0 if resume_at > 0 else os.O_TRUNC), 0o644)
        self.size = os.fstat(self._fd).st_size  # bytes in the file
        # The runner's stream offset expected next (an empty file goes on from 0: the gap
        # is then said in it).
        self.next = resume_at if self.size else 0
        self.capped = self.size >= limit
        self.touched = time.monotonic()
        self._lock = threading.Lock()  # a read never meets a closed (or reused) descriptor

    def append(self, start: int, end: int, text: str) -> bool:
        """The runner's bytes start..end as text; False for a repeat (a retried heartbeat)."""
        if end <= self.next and start < self.next:
            return False
        data = text.encode("utf-8", "replace")
        if start > self.next:
            data = (f"\n[polyarch: {start - self.next} bytes of output not shown live; "
                    "the final log has them]\n").encode() + data
        self.next = end
        self.touched = time.monotonic()
        if self.capped:
            return True
        if self.size + len(data) > self.limit:
            data = data[: max(0, self.limit - self.size)] + (
                f"\n[polyarch: the live log stops at dispatcher.live_log_limit ({self.limit} bytes); "
                "the final log keeps the output's head and tail]\n").encode()
            self.capped = True
        with self._lock:
            if self._fd < 0:
                return True
            os.write(self._fd, data)
            self.size += len(data)
        return True

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read(self, offset: int, most: int) -> bytes:
        with self._lock:
            if self._fd < 0 or offset >= self.size:
                return b""
            return os.pread(self._fd, most, offset)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class LiveLogs:
    def __init__(self, results_dir: Path, limit: int) -> None:
        self.results_dir, self.limit = results_dir, limit
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._by_lease: dict[str, LiveLog] = {}
        self._by_job: dict[JobKey, LiveLog] = {}
        self._failing = ""

    def append(self, lease_id: str, describe: Callable[[], Optional[tuple[JobKey, int]]],
               start: int, end: int, text: str) -> None:
        """A heartbeat's output for a current lease; `describe` names its job (and attempt)
        the first time. A disk that refuses the file never fails the heartbeat."""
        if end < start or len(text) > MAX_PIECE:
            text = text[:MAX_PIECE]
        with self._lock:
            live = self._by_lease.get(lease_id)
        try:
            if live is None:
                found = describe()
                if found is None:
                    return
                key, attempt = found
                # A first piece past 0: another dispatcher took (and acknowledged) the ones before.
                live = LiveLog(key, lease_id, attempt, result_path(self.results_dir, File.LIVE_LOG, repo=key.repo,
                                                                   commit=key.sha, arch=key.arch), self.limit,
                               resume_at=start)
                with self._lock:
                    old = self._by_job.get(key)
                    if old is not None:  # the attempt before this one: its followers are told
                        self._by_lease.pop(old.lease_id, None)
                        old.close()
                    self._by_lease[lease_id] = self._by_job[key] = live
            live.append(start, end, text)
            self._failing = ""
        except OSError as exc:
            if str(exc) != self._failing:  # say it once per cause, not per heartbeat
                log.error("cannot write the live log of lease %s: %s", lease_id, exc)
            self._failing = str(exc)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
                raise
        with self._changed:
            self._changed.notify_all()

    def current(self, key: JobKey) -> Optional[LiveLog]:
        with self._lock:
            return self._by_job.get(key)

    def wait(self, timeout: float) -> None:
        """Until some live log grows or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def sweep(self, live_lease: Callable[[str], bool]) -> None:
        """Close the logs of leases that ended more than GRACE seconds ago."""
        now = time.monotonic()
        with self._lock:
            for lease_id, live in list(self._by_lease.items()):
                if now - live.touched > GRACE and not live_lease(lease_id):
                    del self._by_lease[lease_id]
                    if self._by_job.get(live.key) is live:
                        del self._by_job[live.key]
                    live.close()

    def close_all(self) -> None:
        with self._lock:
            for live in self._by_lease.values():
                live.close()
            self._by_lease.clear()
            self._by_job.clear()
