"""A week's backlog on one dispatcher: 100,000 queued jobs over a history of 1,000,000 results.

    .venv/bin/python -m bench.backlog [--queued 100000] [--results 1000000] [--jobs 1400]
                                      [--json FILE]

Fills a real state database (the dispatcher's own schema, rows written in bulk) with
`--results` published results and `--queued` queued jobs, spread over 7 architectures,
then starts a real dispatcher on it and measures:

- restart to serving: from starting the process to the first job leased over the wire;
- lease and result round trips (p50, p99): 14 simulated runners (2 per architecture)
  each lease a job, then send its result, until `--jobs` results are in; a result's
  acknowledgement means it is committed (synchronous=FULL);
- publication: from a result's acknowledgement to its <arch>.json on disk (the pages a
  result rewrites are written in the same pass);
- status over the wire (the newest 20 commits), p50 and p99 of 50 reads.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from bench.capacity import Dispatcher
from bench.rig import ROOT, write_json
from dispatcher.hub.store import Store
from dispatcher.wire.protocol import Ack, Job, Lease, Register, Reported, Result, Role, StatusRead, StatusReport

ARCHS = ("amd64", "arm64", "armhf", "i386", "ppc64el", "riscv64", "s390x")
RUNNERS_PER_ARCH = 2


def build(path: Path, results: int, queued: int) -> None:
    """The history first (oldest), then the backlog, as a week of outage leaves them."""
    Store(path).close()  # the schema, at this version
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN")
    now = time.time()
    done_commits = results // len(ARCHS)
    queued_commits = queued // len(ARCHS)
    total = done_commits + queued_commits
    db.executemany("INSERT INTO commits (repo, sha, branch, author, subject, timestamp, received_at, branches, "
                   "parent, seq) VALUES ('bench', ?, 'main', 'Dev', ?, ?, ?, '[\"main\"]', ?, ?)",
                   ((f"{i:040x}", f"change {i}", int(now - total + i), now - total + i,
                     f"{i - 1:040x}" if i else "", i) for i in range(total)))
    db.executemany("INSERT INTO jobs (repo, sha, arch, state, attempt, runner, created_at, leased_at, status, "
                   "exit_code, started_at, finished_at, log) VALUES ('bench', ?, ?, 'published', 1, 'old', "
                   "?, ?, 'passed', 0, ?, ?, X'6f6b0a')",
                   ((f"{i:040x}", arch, now - total + i, now - total + i, now - total + i, now - total + i + 1)
                    for i in range(done_commits) for arch in ARCHS))
    db.executemany("INSERT INTO jobs (repo, sha, arch, state, created_at) VALUES ('bench', ?, ?, 'queued', ?)",
                   ((f"{i:040x}", arch, now - total + i) for i in range(done_commits, total) for arch in ARCHS))
    db.execute("COMMIT")
    db.close()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def measure(queued: int, results: int, jobs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="polyarch-backlog-") as tmp:
        root = Path(tmp)
        began = time.monotonic()
        build(root / "var/dispatcher/polyarch.sqlite3", results, queued)
        built_s = time.monotonic() - began
        arch_list = ", ".join(f'"{a}"' for a in ARCHS)
        with Dispatcher(root, heartbeat_timeout=30, repo_settings=f"architectures = [{arch_list}]") as d:
            listening_s = time.monotonic() - d.started_at
            with d.connect(Role.RUNNER, "first") as conn:
                conn.request_ack(Register(arch="amd64", version="bench", host="bench", machine="x86_64"))
                job = conn.request(Lease(wait=30), timeout=120)
                serving_s = time.monotonic() - d.started_at
                assert isinstance(job, Job)  # noqa: S101 - 100,000 are queued
                now = time.time()
                conn.request_ack(Result(lease_id=job.lease_id, status=Reported.PASSED, exit_code=0,
                                        started_at=now, finished_at=now, log="ok\n"))
            leases, acks, published = _run(d, jobs, root / "test_results" / "bench")
            status = []
            with d.connect(Role.CLIENT, "bench") as conn:
                for _ in range(50):
                    sent = time.monotonic()
                    reply = conn.request(StatusRead(repo="bench", limit=20))
                    status.append(time.monotonic() - sent)
                    assert isinstance(reply, StatusReport)  # noqa: S101
            rss = d.rss_mib()
        return {"queued": queued, "results": results, "jobs": len(acks), "build_s": built_s,
                "listening_s": listening_s, "serving_s": serving_s,
                "lease_p50_ms": _pct(leases, 0.5), "lease_p99_ms": _pct(leases, 0.99),
                "result_p50_ms": _pct(acks, 0.5), "result_p99_ms": _pct(acks, 0.99),
                "publish_p50_ms": _pct(published, 0.5), "publish_p99_ms": _pct(published, 0.99),
                "status_p50_ms": _pct(status, 0.5), "status_p99_ms": _pct(status, 0.99), "rss_mib": rss}


def _run(d: Dispatcher, jobs: int, results: Path) -> tuple[list[float], list[float], list[float]]:
    leases: list[float] = []
    acks: list[float] = []
    published: list[float] = []
    lock = threading.Lock()
    left = [jobs]
    watch: list[tuple[Path, float]] = []

    def runner(name: str, arch: str) -> None:
        with d.connect(Role.RUNNER, name) as conn:
            conn.request_ack(Register(arch=arch, version="bench", host=name, machine=arch))
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                sent = time.monotonic()
                job = conn.request(Lease(wait=0))
                leased = time.monotonic()
                assert isinstance(job, Job), job  # noqa: S101
                now = time.time()
                ack = conn.request(Result(lease_id=job.lease_id, status=Reported.PASSED, exit_code=0,
                                          started_at=now, finished_at=now, log="ok\n"))
                done = time.monotonic()
                assert isinstance(ack, Ack) and ack.created, ack  # noqa: S101
                with lock:
                    leases.append(leased - sent)
                    acks.append(done - leased)
                    watch.append((results / job.commit / f"{arch}.json", done))

    threads = [threading.Thread(target=runner, args=(f"{arch}-{i}", arch), daemon=True)
               for arch in ARCHS for i in range(RUNNERS_PER_ARCH)]
    for t in threads:
        t.start()
    pending = watch  # polled as results come in: when each <arch>.json appears
    while any(t.is_alive() for t in threads) or pending:
        with lock:
            current = list(pending)
        still = []
        for path, acked in current:
            if path.exists():
                published.append(max(0.0, time.monotonic() - acked))
            else:
                still.append((path, acked))
        with lock:
            watch[:] = still + watch[len(current):]
            pending = watch
        time.sleep(0.002)
    return leases, acks, published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=1400)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "backlog.json")
    args = parser.parse_args()
    f = measure(args.queued, args.results, args.jobs)
    print(f"{f['queued']:,} queued, {f['results']:,} results (built in {f['build_s']:.0f} s): listening "
          f"{f['listening_s']:.2f} s, serving (first lease) {f['serving_s']:.2f} s after start; {f['jobs']} jobs "
          f"by 14 runners: lease p50 {f['lease_p50_ms']:.1f} ms, p99 {f['lease_p99_ms']:.1f}; result p50 "
          f"{f['result_p50_ms']:.1f} ms, p99 {f['result_p99_ms']:.1f}; result to <arch>.json p50 "
          f"{f['publish_p50_ms']:.0f} ms, p99 {f['publish_p99_ms']:.0f}; status p50 {f['status_p50_ms']:.1f} ms, "
          f"p99 {f['status_p99_ms']:.1f}; RSS {f['rss_mib']:.0f} MiB", flush=True)
    write_json(args.json, f)


if __name__ == "__main__":
    main()
