"""Many runners on one dispatcher: memory, threads and lease safety at 100 / 1,000 / 10,000.

    .venv/bin/python -m bench.swarm [--runners 100 1000 10000] [--seconds 20]
                                    [--heartbeat-timeout 10] [--json FILE]

For each size, a real dispatcher process in a temporary folder and that many simulated
runners speaking the real protocol over loopback, each its own authenticated TCP
connection (one asyncio loop here holds them all, so the client side does not need
10,000 threads). Two phases:

- waiting: every runner connected, registered and long-polling for work with nothing
  queued (a quiet lab). Measured: the dispatcher's RSS and thread count.
- holding: one job per runner is queued, each runner leases one and heartbeats at the
  interval the dispatcher's welcome asks for (heartbeat_timeout / 3, as a real runner),
  for `--seconds`. Measured: RSS and threads under that load, heartbeat round trips
  (median, p99, max), heartbeats refused (lease lost) and leases the dispatcher expired
  (its log): both must be 0. Then each runner sends its result.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench.capacity import Dispatcher, _dispatch
from bench.rig import ROOT, write_json
from dispatcher.wire.auth import client_mac, new_nonce
from dispatcher.wire.frames import decode, encode
from dispatcher.wire.protocol import (HEADER, Ack, Auth, Error, Heartbeat, Hello, Job, Lease, Message, NoJob,
                                      Register, Reported, Result, Role, Welcome)

CONNECTING = 200  # handshakes in flight at once (max_unauthenticated is 64 by default: retried)


class SimRunner:
    def __init__(self, d: Dispatcher, name: str) -> None:
        self.d, self.name = d, name
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.interval = 1.0

    async def request(self, msg: Message, timeout: float = 60) -> Message:
        assert self.reader is not None and self.writer is not None  # noqa: S101 - connected first
        self.writer.write(encode(msg))
        return await asyncio.wait_for(self._recv(), timeout)

    async def _recv(self) -> Message:
        assert self.reader is not None  # noqa: S101 - connected first
        (size,) = HEADER.unpack(await self.reader.readexactly(HEADER.size))
        return decode(await self.reader.readexactly(size))

    async def connect(self) -> None:
        for attempt in range(20):
            try:
                self.reader, self.writer = await asyncio.open_connection(self.d.address.host, self.d.address.port)
                hello = await asyncio.wait_for(self._recv(), 30)
                assert isinstance(hello, Hello)  # noqa: S101 - the protocol's first frame
                nonce = new_nonce()
                welcome = await self.request(Auth(role=Role.RUNNER, name=self.name, nonce=nonce, mac=client_mac(
                    self.d.secret, hello.nonce, nonce, Role.RUNNER.value, self.name)))
                assert isinstance(welcome, Welcome), welcome  # noqa: S101
                self.interval = welcome.heartbeat_interval
                ack = await self.request(Register(arch="amd64", version="bench", host=f"host-{self.name}",
                                                  machine="x86_64"))
                assert isinstance(ack, Ack), ack  # noqa: S101
                return
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                self.close()  # cut to make room for others' handshakes: try again
                await asyncio.sleep(0.05 * (attempt + 1))
        raise SystemExit(f"bench: {self.name} could not connect")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _connect_all(d: Dispatcher, n: int) -> list[SimRunner]:
    gate = asyncio.Semaphore(CONNECTING)
    runners = [SimRunner(d, f"swarm-{i}") for i in range(n)]

    async def one(r: SimRunner) -> None:
        async with gate:
            await r.connect()

    await asyncio.gather(*(one(r) for r in runners))
    return runners


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


async def _size(d: Dispatcher, n: int, seconds: float) -> dict:
    began = time.monotonic()
    runners = await _connect_all(d, n)
    connect_s = time.monotonic() - began
    # Waiting: every runner long-polls; nothing is queued.
    polls = [asyncio.ensure_future(r.request(Lease(wait=30), timeout=90)) for r in runners]
    await asyncio.sleep(3.0)
    waiting = {"rss_mib": d.rss_mib(), "threads": _threads(d.proc.pid)}
    # Holding: one job each; the waiting polls get them.
    began = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, _dispatch, d, n)
    jobs = []
    for r, poll in zip(runners, polls):
        reply = await poll
        while isinstance(reply, NoJob):
            reply = await r.request(Lease(wait=30), timeout=90)
        if not isinstance(reply, Job):
            raise SystemExit(f"bench: {r.name} got {reply!r:.80} instead of a job")
        jobs.append(reply)
    lease_all_s = time.monotonic() - began
    rtts: list[float] = []
    lost = [0]
    end = time.monotonic() + seconds

    async def beat(r: SimRunner, job: Job) -> None:
        await asyncio.sleep(r.interval * secrets.randbelow(1000) / 1000)  # spread, as runners started apart
        while time.monotonic() < end:
            sent = time.monotonic()
            reply = await r.request(Heartbeat(job.lease_id))
            rtts.append(time.monotonic() - sent)
            if isinstance(reply, Error):
                lost[0] += 1
            await asyncio.sleep(max(0.0, r.interval - (time.monotonic() - sent)))

    beating = asyncio.gather(*(beat(r, j) for r, j in zip(runners, jobs)))
    await asyncio.sleep(seconds / 2)
    holding = {"rss_mib": d.rss_mib(), "threads": _threads(d.proc.pid)}
    await beating
    now = time.time()
    answers = await asyncio.gather(*(r.request(Result(lease_id=j.lease_id, status=Reported.PASSED, exit_code=0,
                                                      started_at=now, finished_at=now, log="ok\n"))
                                     for r, j in zip(runners, jobs)))
    recorded = sum(1 for a in answers if isinstance(a, Ack) and a.created)
    for r in runners:
        r.close()
    rtts.sort()
    if not rtts:
        raise SystemExit("bench: no heartbeat was sent; give --seconds more than heartbeat_timeout / 3")
    return {"runners": n, "connect_s": connect_s, "lease_all_s": lease_all_s, "waiting": waiting,
            "holding": holding, "heartbeat_interval_s": runners[0].interval, "heartbeats": len(rtts),
            "lease_lost": lost[0], "expired": d.expired(), "results_recorded": recorded,
            "heartbeat_rtt_median_ms": statistics.median(rtts) * 1000,
            "heartbeat_rtt_p99_ms": rtts[int(len(rtts) * 0.99)] * 1000, "heartbeat_rtt_max_ms": rtts[-1] * 1000}


def measure(n: int, seconds: float, heartbeat_timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="polyarch-swarm-") as tmp:
        with Dispatcher(Path(tmp), heartbeat_timeout=heartbeat_timeout, connections=n + 256) as d:
            idle = d.rss_mib()
            figures = asyncio.run(_size(d, n, seconds))
            figures["rss_idle_mib"] = idle
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--heartbeat-timeout", type=float, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "swarm.json")
    args = parser.parse_args()
    rows = []
    for n in args.runners:
        f = measure(n, args.seconds, args.heartbeat_timeout)
        rows.append(f)
        print(f"{n:>6} runners: RSS idle {f['rss_idle_mib']:.1f} MiB, waiting {f['waiting']['rss_mib']:.1f} MiB "
              f"({f['waiting']['threads']} threads), holding {f['holding']['rss_mib']:.1f} MiB "
              f"({f['holding']['threads']} threads); {f['heartbeats']} heartbeats every "
              f"{f['heartbeat_interval_s']:.2f} s: round trip median {f['heartbeat_rtt_median_ms']:.1f} ms, "
              f"p99 {f['heartbeat_rtt_p99_ms']:.1f}, max {f['heartbeat_rtt_max_ms']:.1f}; lease lost "
              f"{f['lease_lost']}, expired {f['expired']}; connect {f['connect_s']:.1f} s, every lease "
              f"{f['lease_all_s']:.1f} s; {f['results_recorded']} results recorded", flush=True)
    write_json(args.json, {"seconds": args.seconds, "heartbeat_timeout": args.heartbeat_timeout, "sizes": rows})


if __name__ == "__main__":
    main()
