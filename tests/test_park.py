"""Waiting runners cost the dispatcher no thread each (hub/park.py), and still get work
at once: a real dispatcher process, hundreds of real authenticated connections."""

from __future__ import annotations

import selectors
import time
from pathlib import Path

from conftest import Polyarch, wait_for
from dispatcher.common.config import Address
from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection
from dispatcher.wire.protocol import Job, Lease, NoJob, Register, Role, Submit

WAITING = 200
WAIT = 6.0


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def _connect(polyarch: Polyarch, role: Role, name: str) -> Connection:
    host, port = (polyarch.root / "var/dispatcher/address").read_text().strip().rsplit(":", 1)
    return Connection(Address(host, int(port)), role, name, load_secret(polyarch.root / "var/secret"))


def _replies(conns: list[Connection], timeout: float) -> list[tuple[object, float]]:
    """Each connection's next reply, with when it arrived (read as they come, not in order)."""
    out = []
    with selectors.DefaultSelector() as sel:
        for conn in conns:
            sel.register(conn.channel.sock, selectors.EVENT_READ, conn)
        deadline = time.monotonic() + timeout
        while len(out) < len(conns) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                out.append((key.data.channel.recv(5.0), time.monotonic()))
                sel.unregister(key.fileobj)
    return out


def test_waiting_runners_hold_no_thread_and_new_work_reaches_live_waiters_at_once(polyarch: Polyarch) -> None:
    polyarch.write_config(heartbeat_timeout=30)
    dispatcher = polyarch.dispatcher()
    idle_threads = _threads(dispatcher.pid)
    runners = []
    try:
        for i in range(WAITING):
            conn = _connect(polyarch, Role.RUNNER, f"sim-{i}")
            conn.request_ack(Register(arch="amd64", version="test", host="h", machine="x86_64"))
            runners.append(conn)
        asked = time.monotonic()
        for conn in runners:
            conn.channel.send(Lease(wait=WAIT))  # the replies are read below
        wait_for(lambda: dispatcher.log().count("registered from") == WAITING, what="every runner registered")
        time.sleep(0.5)  # every lease has reached the dispatcher and found nothing
        # One thread per connection would be 200 more; the pool has at most 32.
        waiting_threads = _threads(dispatcher.pid)
        assert waiting_threads <= idle_threads + 40, (idle_threads, waiting_threads)

        # The five oldest waiters hang up: new work must go to live ones, not to them.
        for conn in runners[:5]:
            conn.close()
        live = runners[5:]
        with _connect(polyarch, Role.CLIENT, "t") as client:
            for n in range(5):
                client.request_ack(Submit(repo="demo", commit=f"{n:x}" * 40, branch="main"))
        queued = time.monotonic()
        replies = _replies(live, WAIT + 10)
    finally:
        for conn in runners:
            conn.close()
    jobs = [(reply, at) for reply, at in replies if isinstance(reply, Job)]
    assert len(jobs) == 5 and sorted(j.commit[0] for j, _ in jobs) == ["0", "1", "2", "3", "4"]
    assert all(at - queued < 2.0 for _, at in jobs), [at - queued for _, at in jobs]  # not at the deadline
    nojobs = [at for reply, at in replies if isinstance(reply, NoJob)]
    assert len(nojobs) == len(live) - 5
    assert min(nojobs) - asked >= WAIT - 0.5  # each waited out its lease's wait
    assert "lease of" not in dispatcher.log()  # no job went to a runner that had hung up
