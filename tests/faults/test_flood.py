"""Floods against a real dispatcher process: 1,000 silent connections, slowloris, idle peers."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from conftest import Polyarch, wait_for
from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection
from dispatcher.common.config import Address
from dispatcher.wire.protocol import Ack, Dispatch, Role
from dispatcher.hub.server import AUTH_TIMEOUT
from faults.conftest import record, scale

pytestmark = pytest.mark.daemons

FLOOD = 1000
IDLE_TIMEOUT = 2


def _proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def _address(polyarch: Polyarch) -> Address:
    host, port = (polyarch.root / "var/dispatcher/address").read_text().strip().rsplit(":", 1)
    return Address(host, int(port))


def _serves(polyarch: Polyarch) -> bool:
    secret = load_secret(polyarch.root / "var/secret")
    with Connection(_address(polyarch), Role.OBSERVER, "witness", secret) as conn:
        return isinstance(conn.request(Dispatch("demo", "main", [])), Ack)


@pytest.fixture
def dispatcher(polyarch: Polyarch):
    text = polyarch.config.read_text().replace("max_attempts = 3", f"max_attempts = 3\nidle_timeout = {IDLE_TIMEOUT}")
    polyarch.config.write_text(text)
    return polyarch.dispatcher()


def test_a_thousand_silent_connections_cost_bounded_threads_and_memory(polyarch: Polyarch, dispatcher) -> None:
    pid = dispatcher.proc.pid
    assert _serves(polyarch)
    before = _proc_status(pid)
    address = _address(polyarch)
    rounds, peak_threads, peak_rss = scale(1, 5), 0, 0
    for _ in range(rounds):
        cut_before = dispatcher.log().count("cut an unauthenticated connection")
        flood = [socket.create_connection((address.host, address.port), timeout=5) for _ in range(FLOOD)]
        try:
            # Wait until the server has taken every one of them off the kernel's queue.
            wait_for(lambda c=cut_before: dispatcher.log().count("cut an unauthenticated connection") - c
                     >= FLOOD - 64, what="the dispatcher to accept the whole flood")
            status = _proc_status(pid)
            peak_threads, peak_rss = max(peak_threads, status["Threads"]), max(peak_rss, status["VmRSS"])
            # Strangers evict strangers; an authenticating client still gets in at once.
            assert _serves(polyarch)
        finally:
            for sock in flood:
                sock.close()
    wait_for(lambda: _proc_status(pid)["Threads"] <= before["Threads"] + 2, what="the flood's threads to end")
    assert dispatcher.alive
    # max_unauthenticated (64) handler threads at most, plus the server's own few.
    assert peak_threads <= before["Threads"] + 64 + 4, (before, peak_threads)
    assert peak_rss - before["VmRSS"] < 40 * 1024, (before, peak_rss)
    record("hostile", f"{FLOOD:,} concurrent silent connections", inputs=FLOOD * rounds, crashes=0,
           peak_threads=peak_threads, rss_growth_mib=round((peak_rss - before["VmRSS"]) / 1024, 1))


def test_slowloris_and_idle_connections_are_closed(polyarch: Polyarch, dispatcher) -> None:
    address = _address(polyarch)
    # Slowloris: a frame announcing 1,000 bytes trickles in a byte every half second.
    slow = [socket.create_connection((address.host, address.port), timeout=5) for _ in range(20)]
    trickle = struct.pack(">I", 1000) + b"x" * 1000
    began = time.monotonic()
    closed: set[int] = set()
    tick = 0
    while len(closed) < len(slow) and time.monotonic() - began < AUTH_TIMEOUT + 10:
        for i, sock in enumerate(slow):
            if i in closed:
                continue
            try:
                sock.sendall(trickle[tick:tick + 1])
                sock.settimeout(0.01)
                while True:
                    data = sock.recv(65536)
                    if not data:
                        closed.add(i)
                        break
            except (socket.timeout, TimeoutError):
                pass
            except OSError:
                closed.add(i)
        tick += 1
        time.sleep(0.5)
    elapsed = time.monotonic() - began
    for sock in slow:
        sock.close()
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slowloris connection(s) still open"
    assert AUTH_TIMEOUT - 1 < elapsed < AUTH_TIMEOUT + 5  # cut by the frame deadline, not by chance
    # An authenticated peer that falls silent is closed after idle_timeout.
    secret = load_secret(polyarch.root / "var/secret")
    conn = Connection(address, Role.OBSERVER, "sleepy", secret)
    time.sleep(IDLE_TIMEOUT + 1)
    conn.channel.sock.settimeout(5)
    assert conn.channel.sock.recv(1) == b""
    conn.close()
    assert _serves(polyarch) and dispatcher.alive
    record("hostile", "slowloris (1 byte / 0.5 s) and idle authenticated connections", inputs=len(slow) + 1,
           crashes=0)
