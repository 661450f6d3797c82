"""`polyarch-dispatcher logs`: a job's log, read over the wire, followed while it runs.

The dispatcher answers each LOG_READ with the text from an offset of one source (the
final log once published, else the live one) and waits up to a second for more; the
reader asks again from where the answer ended. A retry or rerun starting over is a new
attempt: the reader says so and reads that attempt from its start. A dispatcher restart
is ridden out: the reader reconnects and goes on from its offset.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from dispatcher.common.errors import PolyarchError, RemoteError
from dispatcher.wire.client import Connection
from dispatcher.wire.protocol import LogRead, LogSource, LogText

WAIT = 1.0  # the dispatcher holds a follower's read this long for new output
RECONNECT = 1.0


def status_line(reply: LogText) -> str:
    """How the job ended, the follower's last line."""
    by = f" on runner {reply.runner}" if reply.runner else ""
    why = f": {reply.reason}" if reply.reason and reply.state.status is not None \
        and not reply.state.status.passing else ""
    return f"[polyarch: {reply.repo} {reply.commit[:12]} {reply.arch} {reply.state.value} " \
           f"(attempt {reply.attempt}{by}){why}]"


class OverWire:
    """LOG_READ over one connection, reconnecting after a failure (a dispatcher restart)."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self.connect = connect
        self.conn: Optional[Connection] = None

    def __call__(self, request: LogRead) -> LogText:
        try:
            if self.conn is None:
                self.conn = self.connect()
            reply = self.conn.request(request, timeout=request.wait + 30)
        except RemoteError:
            raise
        except (OSError, PolyarchError):
            self.close()
            raise
        if not isinstance(reply, LogText):
            self.close()
            raise PolyarchError(f"dispatcher answered log_read with {reply.KIND.value}")
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def read(fetch: Callable[[LogRead], LogText], repo: str, commit: str, arch: str, write: Callable[[str], None],
         follow: bool, give_up: float = 30.0) -> LogText:
    """Write the job's log (all of it now, or with `follow` until the job is final);
    returns the last answer. `fetch` answers one LOG_READ (over the wire, or the hub
    itself for the HTTP API); its OSError or PolyarchError is ridden out while following."""
    offset, source, attempt = 0, None, 0
    unreachable_since: Optional[float] = None
    while True:
        try:
            reply = fetch(LogRead(repo=repo, commit=commit, arch=arch, offset=offset,
                                  wait=WAIT if follow else 0.0, source=source, attempt=attempt))
            unreachable_since = None
        except RemoteError:
            raise  # refused (unknown repo or job): asking again will not help
        except (OSError, PolyarchError) as exc:
            if not follow:
                raise
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > give_up:
                raise PolyarchError(f"lost the dispatcher while following the log: {exc}") from None
            time.sleep(RECONNECT)
            continue
        if reply.text:
            write(reply.text)
        offset = reply.end
        if reply.source != LogSource.NONE:
            source, attempt = reply.source, reply.attempt
        if reply.done:
            if not reply.state.final and follow:
                # The attempt followed ended and another one is queued or running.
                write(f"\n[polyarch: {reply.reason or f'attempt {reply.attempt} ended'}; following the next "
                      "attempt]\n")
                offset, source, attempt = 0, None, 0
                continue
            return reply
        if not follow and not reply.text:
            return reply
