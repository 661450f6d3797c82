"""Dispatcher capacity: simulated runners speaking the real protocol over loopback.

    .venv/bin/python -m bench.capacity [--runners 100] [--jobs 2000] [--repeat 3]
                                       [--hold-runners 1000] [--hold-seconds 20] [--json FILE]
                                       [--state sqlite postgresql]

Throughput: a real dispatcher process, N runner connections (threads here, each its own
authenticated TCP connection) that lease a job, answer it at once with a result, and
lease again; the observer's role dispatches `--jobs` commits. Jobs per second are
measured from the first dispatch to the last acknowledged result; an acknowledgement
means the result is committed to the state (SQLite, synchronous=FULL; or PostgreSQL,
fsync on, in a private cluster this benchmark starts: `--state postgresql`) and its files
are written.

Hold: `--hold-runners` connections each lease one job and heartbeat every second for
`--hold-seconds`; counted: heartbeats refused (lease lost), leases the dispatcher
expired (its log), the slowest heartbeat round trip, and the dispatcher's RSS.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

from bench.rig import ROOT, rss_mib, write_json
from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection
from dispatcher.common.config import Address
from dispatcher.common.errors import RemoteError
from dispatcher.wire.protocol import (CommitInfo, Dispatch, Heartbeat, Job, Lease, Register, Result, Role,
                                 Reported)


class Dispatcher:
    """A real dispatcher process in a temporary folder."""

    def __init__(self, root: Path, heartbeat_timeout: float, extra: str = "", connections: int = 4096,
                 repo_settings: str = "", state: str = "sqlite", secret: Optional[Path] = None,
                 results: Optional[Path] = None) -> None:
        """`secret` and `results`: another dispatcher's, to share its state and folder."""
        self.root = root
        secret = secret or root / "var" / "secret"
        (root / "polyarch.toml").write_text(extra + "\n" + textwrap.dedent(f"""\
            [dispatcher]
            listen = "127.0.0.1:0"
            state = "{state}"
            token_file = "{secret}"
            results_dir = "{results or root / 'test_results'}"
            heartbeat_timeout = {heartbeat_timeout}
            max_connections = {connections}
            [[repos]]
            name = "bench"
            url = "{root}"
            test_command = "true"
            """) + repo_settings + "\n")
        self.log = root / "dispatcher.log"
        self.started_at = time.monotonic()
        with open(self.log, "wb") as log:
            # This tree's dispatcher, whichever checkout the environment's editable install names.
            self.proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "serve", "--config",
                                          str(root / "polyarch.toml")], cwd=root, stdout=log, stderr=log,
                                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
        deadline = time.monotonic() + 120
        while "listening on" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"bench: dispatcher did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        host, port = (root / "var/dispatcher/address").read_text().strip().rsplit(":", 1)
        self.address = Address(host, int(port))
        self.secret = load_secret(secret)

    def connect(self, role: Role, name: str) -> Connection:
        return Connection(self.address, role, name, self.secret)

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def expired(self) -> int:
        return self.log.read_text(errors="replace").count("expired: runner")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def __enter__(self) -> "Dispatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # also when the benchmark fails: no dispatcher left running


def _dispatch(d: Dispatcher, n: int) -> None:
    with d.connect(Role.OBSERVER, "bench-observer") as conn:
        for start in range(0, n, 1000):
            batch = [CommitInfo(sha=secrets.token_hex(20), subject=f"bench {i}")
                     for i in range(start, min(n, start + 1000))]
            conn.request_ack(Dispatch(repo="bench", branch="main", commits=batch))


def _register(conn: Connection) -> None:
    conn.request_ack(Register(arch="amd64", version="bench", host="bench", machine="x86_64"))


def throughput(runners: int, jobs: int, state: str = "sqlite", dispatchers: int = 1) -> dict[str, float]:
    """`dispatchers` > 1: that many on one PostgreSQL `state`, sharing a results folder;
    the simulated runners spread over them, the commits dispatched to the first."""
    with tempfile.TemporaryDirectory(prefix="polyarch-capacity-") as tmp:
        first = Dispatcher(Path(tmp), heartbeat_timeout=30, state=state)
        ds = [first]
        try:
            for i in range(1, dispatchers):
                (Path(tmp) / f"d{i}").mkdir()
                ds.append(Dispatcher(Path(tmp) / f"d{i}", heartbeat_timeout=30, state=state,
                                     secret=Path(tmp) / "var" / "secret", results=Path(tmp) / "test_results"))
            return _throughput(ds, runners, jobs)
        finally:
            for d in ds:
                d.stop()


def _throughput(ds: list[Dispatcher], runners: int, jobs: int) -> dict[str, float]:
    d = ds[0]
    with d:
        done = threading.Semaphore(0)
        stop = threading.Event()
        errors: list[str] = []

        def runner(i: int) -> None:
            try:
                with ds[i % len(ds)].connect(Role.RUNNER, f"sim-{i}") as conn:
                    _register(conn)
                    while not stop.is_set():
                        job = conn.request(Lease(wait=0.5))
                        if isinstance(job, Job):
                            now = time.time()
                            conn.request_ack(Result(lease_id=job.lease_id, status=Reported.PASSED, exit_code=0,
                                                    started_at=now, finished_at=now, log="ok\n"))
                            done.release()
            except (OSError, RemoteError) as exc:
                errors.append(f"sim-{i}: {exc}")

        threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(runners)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every simulated runner connected and waiting
        began = time.monotonic()
        _dispatch(d, jobs)
        for _ in range(jobs):
            while not done.acquire(timeout=1.0):
                if errors:
                    raise SystemExit(f"bench: {len(errors)} simulated runner(s) failed, first: {errors[0]}")
                if time.monotonic() - began > 300:
                    raise SystemExit("bench: results stopped arriving")
        elapsed = time.monotonic() - began
        rss = d.rss_mib()
        stop.set()
        for t in threads:
            t.join(timeout=5)
        d.stop()
        if errors:
            raise SystemExit(f"bench: {len(errors)} simulated runner(s) failed, first: {errors[0]}")
        return {"jobs_per_s": jobs / elapsed, "seconds": elapsed, "rss_mib": rss}


def hold(runners: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="polyarch-hold-") as tmp:
        with Dispatcher(Path(tmp), heartbeat_timeout=5) as d:
            return _hold(d, runners, seconds)


def _hold(d: Dispatcher, runners: int, seconds: float) -> dict[str, float]:
    idle_rss = d.rss_mib()
    _dispatch(d, runners)
    lost, rtts, errors = [0], [], []
    lock = threading.Lock()
    leased = threading.Semaphore(0)

    def runner(i: int) -> None:
        try:
            with d.connect(Role.RUNNER, f"hold-{i}") as conn:
                _register(conn)
                job = conn.request(Lease(wait=10))
                if not isinstance(job, Job):
                    raise RemoteError("no-job", "no job leased")
                leased.release()  # heartbeats start at once, as a real runner's do
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    time.sleep(1.0)
                    sent = time.monotonic()
                    try:
                        conn.request_ack(Heartbeat(job.lease_id))
                    except RemoteError as exc:
                        if exc.code != "lease-lost":
                            raise
                        with lock:
                            lost[0] += 1
                    with lock:
                        rtts.append(time.monotonic() - sent)
                now = time.time()
                conn.request_ack(Result(lease_id=job.lease_id, status=Reported.PASSED, exit_code=0,
                                        started_at=now, finished_at=now, log="ok\n"))
        except (OSError, RemoteError) as exc:
            errors.append(f"hold-{i}: {exc}")

    threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(runners)]
    for t in threads:
        t.start()
    for _ in range(runners):
        if not leased.acquire(timeout=120):
            raise SystemExit("bench: not every held runner got a job")
    time.sleep(seconds / 2)
    load_rss = d.rss_mib()
    for t in threads:
        t.join(timeout=seconds + 60)
    expired = d.expired()
    d.stop()
    if errors:
        raise SystemExit(f"bench: {len(errors)} held runner(s) failed, first: {errors[0]}")
    rtts.sort()
    return {"runners": runners, "heartbeats": len(rtts), "lease_lost": lost[0], "expired": expired,
            "heartbeat_rtt_median_ms": statistics.median(rtts) * 1000,
            "heartbeat_rtt_max_ms": rtts[-1] * 1000, "rss_idle_mib": idle_rss, "rss_under_load_mib": load_rss}


def on_postgresql(runners: int, jobs: int, repeat: int) -> dict[str, dict[str, float]]:
    """Throughput with the state on PostgreSQL (a private cluster, a new database a run),
    with one dispatcher and with two sharing it, run alternately."""
    from bench.postgres import Cluster

    cluster = Cluster().init().start()
    rates: dict[int, list[float]] = {1: [], 2: []}
    try:
        for i in range(repeat):
            for n in rates:
                url = cluster.create_database(f"capacity{i}_{n}")
                rates[n].append(throughput(runners, jobs, url, dispatchers=n)["jobs_per_s"])
    finally:
        cluster.close()
    out = {}
    for n, got in rates.items():
        got.sort()
        out[f"dispatchers_{n}"] = {"jobs_per_s_median": statistics.median(got), "jobs_per_s_min": got[0],
                                   "jobs_per_s_max": got[-1]}
        print(f"throughput on PostgreSQL, {n} dispatcher(s), {runners} simulated runners, {jobs} jobs, {repeat} "
              f"runs: median {statistics.median(got):.0f} jobs/s (min {got[0]:.0f}, max {got[-1]:.0f})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hold-runners", type=int, default=1000)
    parser.add_argument("--hold-seconds", type=float, default=20)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    parser.add_argument("--state", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite"],
                        help="the backends to measure throughput on (the hold runs on SQLite)")
    args = parser.parse_args()
    if "postgresql" in args.state:
        on_postgresql(args.runners, args.jobs, args.repeat)
        if args.state == ["postgresql"]:
            return
    runs = [throughput(args.runners, args.jobs) for _ in range(args.repeat)]
    rates = sorted(r["jobs_per_s"] for r in runs)
    figures = {"runners": args.runners, "jobs": args.jobs, "repeat": args.repeat,
               "jobs_per_s_median": statistics.median(rates), "jobs_per_s_min": rates[0],
               "jobs_per_s_max": rates[-1], "rss_after_jobs_mib": max(r["rss_mib"] for r in runs),
               "hold": hold(args.hold_runners, args.hold_seconds)}
    h = figures["hold"]
    print(f"throughput, {args.runners} simulated runners, {args.jobs} jobs, {args.repeat} runs: "
          f"median {figures['jobs_per_s_median']:.0f} jobs/s (min {rates[0]:.0f}, max {rates[-1]:.0f}); "
          f"dispatcher RSS {figures['rss_after_jobs_mib']:.1f} MiB after the jobs")
    print(f"hold, {h['runners']} runners heartbeating every 1 s for {args.hold_seconds:g} s: {h['heartbeats']} "
          f"heartbeats, lease lost {h['lease_lost']}, leases expired {h['expired']}, round trip median "
          f"{h['heartbeat_rtt_median_ms']:.1f} ms, max {h['heartbeat_rtt_max_ms']:.1f} ms; dispatcher RSS "
          f"{h['rss_idle_mib']:.1f} MiB idle, {h['rss_under_load_mib']:.1f} MiB under load")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
