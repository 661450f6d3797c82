"""A running job's output on its way to the dispatcher: the live log.

Every byte the job's commands write (the setup's, then the test's) is numbered in one
stream. The runner's main thread takes what is new with each heartbeat and drops it once
the dispatcher acknowledged it; a heartbeat that failed sends the same bytes again, so
the dispatcher can tell a repeat (its end is not past what it has) from new output.

Memory is bounded: a job that writes faster than heartbeats carry keeps only the newest
`limit` bytes waiting, and the next piece says how far it skipped (the final log, capped
by runner.log_limit, is assembled apart from this and loses nothing to it).
"""

from __future__ import annotations

import codecs
import dataclasses
import threading

from dispatcher.common.utf8 import whole_characters

CHUNK = 64 * 1024  # most output one heartbeat carries
LIMIT = 256 * 1024  # most output waiting to be sent
INTERVAL = 0.5  # seconds between two heartbeats that carry output: the live log's delay


@dataclasses.dataclass(frozen=True)
class Piece:
    """Bytes start..end of the job's output stream, as text (UTF-8, cut on a character)."""

    start: int
    end: int
    text: str


class LiveOutput:
    """Fed by the output thread of each of the job's commands, read by the main thread."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._writes = 0
        self._ended = False
        self._limit = limit
        self._pending = bytearray()
        self._start = 0  # the stream offset of _pending[0]
        self._taken: Piece | None = None  # sent, not acknowledged yet

    def write(self, data: bytes) -> None:
        with self._lock:
            self._pending += data
            excess = len(self._pending) - self._limit
            if excess > 0:
                # The dispatcher sees the gap in the offsets and marks it in the live log.
                del self._pending[:excess]
                self._start += excess
                self._taken = None
            self._writes += 1
            self._written.notify_all()

    def end(self) -> None:
        """The job's commands are done: a waiter wakes at once."""
        with self._lock:
            self._ended = True
            self._written.notify_all()

    def wait_for_write(self, timeout: float) -> None:
        """Until the job writes something (or ends), at most `timeout` seconds: the first
        line after a quiet spell goes out at once, not at the next tick."""
        with self._written:
            seen = self._writes
            self._written.wait_for(lambda: self._writes != seen or self._ended, timeout)

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._ended

    @property
    def has_output(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def take(self, most: int = CHUNK, final: bool = False) -> Piece | None:
        """What to send now (the piece not yet acknowledged, if any), or None. Until the
        job has ended (`final`), a character cut at the end waits for its other bytes."""
        with self._lock:
            if self._taken is not None:
                return self._taken
            data = bytes(self._pending[:most])
            cut = len(data) if final else whole_characters(data)
            if cut == 0:
                return None
            text = codecs.decode(data[:cut], "utf-8", "replace")
            self._taken = Piece(self._start, self._start + cut, text)
            return self._taken

    def acknowledged(self, piece: Piece) -> None:
        with self._lock:
            if self._taken is not piece:
                return  # skipped past while it was on its way
            drop = piece.end - self._start
            del self._pending[:drop]
            self._start = piece.end
            self._taken = None

    @property
    def taken(self) -> bool:
        """A piece is on its way, not acknowledged (the last heartbeat failed)."""
        with self._lock:
            return self._taken is not None

