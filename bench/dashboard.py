"""The HTML dashboard's cost per result, with a long history and a short one side by side.

    .venv/bin/python -m bench.dashboard [--commits 10000] [--repeat 21]

Fills a real state database with N commits (and a baseline with 100), writes one
result's files, then times `Dashboard.update` for that result: the pages a result
rewrites (its commit, its page of 100, the repository's front page, the index). Prints
medians, the ratio of the long history to the short one, and the size of the largest
page; writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.rig import ROOT, write_json
from dispatcher.hub.dashboard import Dashboard
from dispatcher.common.states import Status
from dispatcher.wire.protocol import CommitInfo
from dispatcher.hub.reads import record_of, summary_of
from dispatcher.hub.store import JobResult, RunnerRow, Store
from dispatcher.results.writing import write_result


def measure(commits: int, repeat: int, folder: Path) -> dict:
    store = Store(folder / "state.sqlite3")
    results = folder / "test_results"
    shas = [f"{i:040x}" for i in range(commits)]
    # Older commits queued on arm64 only, the newest on both: an amd64 runner then leases
    # the newest, the usual case (a result for a recent commit).
    store.jobs.enqueue("big", "main", [CommitInfo(s, "Dev", f"change {i}") for i, s in enumerate(shas[:-1])], ["arm64"])
    store.jobs.enqueue("big", "main", [CommitInfo(shas[-1], "Dev", "newest")], ["amd64", "arm64"])
    runner = RunnerRow("r1", "amd64", "host", "x86_64", "0", False, "", 0.0, 0.0)
    job = store.jobs.claim(runner)
    done = store.jobs.record_result(job.lease_id, JobResult(Status.FAILED, 1, time.time() - 1, time.time(), b"log\n"))
    write_result(results, record_of(done), b"log\n", b"", summary_of(store, done.repo, done.sha, done.branch))
    store.jobs.mark_published(done.id)
    dashboard = Dashboard(results, store, [("big", ["amd64", "arm64"])])
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        dashboard.update([(done.repo, done.sha)])
        samples.append((time.perf_counter() - began) * 1000)
    pages = list(results.rglob("*.html"))
    store.close()
    return {"commits": commits, "median_ms": round(statistics.median(samples), 2), "min_ms": round(min(samples), 2),
            "max_ms": round(max(samples), 2), "pages_written": len(pages),
            "largest_page_kb": round(max(p.stat().st_size for p in pages) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        short = measure(args.baseline, args.repeat, Path(tmp) / "short")
        long = measure(args.commits, args.repeat, Path(tmp) / "long")
    ratio = long["median_ms"] / short["median_ms"] if short["median_ms"] else None
    for row in (short, long):
        print(f"dashboard: {row['commits']:>6} commits: update after one result {row['median_ms']:.1f} ms median "
              f"(min {row['min_ms']:.1f}, max {row['max_ms']:.1f}), largest page {row['largest_page_kb']} KB")
    print(f"dashboard: {args.commits} / {args.baseline} commits: {ratio:.2f}x")
    write_json(args.json, {"short": short, "long": long, "ratio": ratio})


if __name__ == "__main__":
    main()
