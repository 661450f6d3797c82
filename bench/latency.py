"""Commit-to-result latency for a no-op test on a local repository.

    .venv/bin/python -m bench.latency [--commits 20] [--poll-interval 5] [--no-watch]
                                      [--gap S] [--idle-timeout S] [--json FILE]

Starts the three real daemons on a repository in a temporary folder, commits with
random gaps (0.2-0.6 s, or `--gap` seconds apart: pushes minutes apart, as labs push,
shortened by a short `--idle-timeout` so that every push comes after the dispatcher
closed the idle observer connection and after a poll), and measures from `git commit`
returning to `<arch>.json` appearing. Prints median, p95, min and max; writes the
figures as JSON.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from bench.rig import ROOT, daemons, git, new_repo, wait_file, write_config, write_json


def measure(commits: int, poll_interval: float, watch: bool, seed: int,
            inspect: Optional[Callable[[Path, list[str]], None]] = None, gap: Optional[float] = None,
            idle_timeout: Optional[float] = None, arch: str = "amd64",
            runner_args: tuple[str, ...] = ()) -> list[float]:
    """Latencies of `commits` commits; `inspect(root, shas)` sees the run's files before teardown."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="polyarch-bench-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        config = write_config(root, repo, poll_interval=poll_interval, watch=watch, idle_timeout=idle_timeout,
                              arch=arch)
        with daemons(root, config, runner_args=runner_args):
            results = root / "test_results" / "bench"
            wait_file(results / git(repo, "rev-parse", "HEAD") / f"{arch}.json")  # warm-up
            latencies, shas = [], []
            for i in range(commits):
                time.sleep(gap if gap is not None else rng.uniform(0.2, 0.6))
                git(repo, "commit", "-q", "--allow-empty", "-m", f"bench {i}")
                committed = time.monotonic()
                sha = git(repo, "rev-parse", "HEAD")
                latencies.append(wait_file(results / sha / f"{arch}.json", 60 + poll_interval * 4) - committed)
                shas.append(sha)
            if inspect is not None:
                inspect(root, shas)
            return latencies


def summarise(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(ordered), "median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000,
            "min_ms": ordered[0] * 1000, "max_ms": ordered[-1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--no-watch", action="store_true", help="poll only, no watchfiles trigger")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap", type=float, help="seconds between pushes (default: random 0.2-0.6)")
    parser.add_argument("--idle-timeout", type=float, help="the dispatcher's idle_timeout (default 120)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    figures = summarise(measure(args.commits, args.poll_interval, not args.no_watch, args.seed, gap=args.gap,
                                idle_timeout=args.idle_timeout))
    mode = f"{'poll only' if args.no_watch else 'watch trigger'}, poll_interval {args.poll_interval:g} s"
    if args.gap is not None:
        mode += f", pushes {args.gap:g} s apart"
    if args.idle_timeout is not None:
        mode += f", idle_timeout {args.idle_timeout:g} s"
    print(f"commit-to-result latency, no-op test, {mode}, {figures['n']} commits:")
    print(f"  median {figures['median_ms']:.0f} ms   p95 {figures['p95_ms']:.0f} ms   "
          f"min {figures['min_ms']:.0f} ms   max {figures['max_ms']:.0f} ms")
    write_json(args.json, {"mode": mode, **figures})


if __name__ == "__main__":
    main()
