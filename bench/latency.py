"""Commit-to-result latency for a no-op test on a local repository.

    .venv/bin/python -m bench.latency [--commits 20] [--poll-interval 5] [--no-watch] [--json FILE]

Starts the three real daemons on a repository in a temporary folder, commits with
random gaps, and measures from `git commit` returning to `<arch>.json` appearing.
Prints median, p95, min and max; writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _wait(path: Path, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no result at {path} within {timeout} s")
        time.sleep(0.002)
    return time.monotonic()


def measure(commits: int, poll_interval: float, watch: bool, seed: int,
            inspect: Optional[Callable[[Path, list[str]], None]] = None) -> list[float]:
    """Latencies of `commits` commits; `inspect(root, shas)` sees the run's files before teardown."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="polyarch-bench-") as tmp:
        root = Path(tmp)
        repo = root / "upstream"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "user.email", "bench@example.invalid")
        _git(repo, "config", "user.name", "Bench")
        _git(repo, "commit", "-q", "--allow-empty", "-m", "start")
        config = root / "polyarch.toml"
        config.write_text(textwrap.dedent(f"""\
            [dispatcher]
            listen = "127.0.0.1:0"
            [observer]
            dispatcher = "127.0.0.1:0"
            poll_interval = {poll_interval}
            watch = {str(watch).lower()}
            [runner]
            dispatcher = "127.0.0.1:0"
            [[repos]]
            name = "bench"
            url = "{repo}"
            architectures = ["amd64"]
            test_command = "true"
            """))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        procs = []
        try:
            for name in ("dispatcher", "runner", "observer"):
                log = open(root / f"{name}.log", "wb")
                procs.append(subprocess.Popen([sys.executable, "-m", name, "serve", "--config", str(config)],
                                              cwd=root, stdout=log, stderr=log, env=env))
                if name == "dispatcher":
                    _wait(root / "var/dispatcher/address", 30)
            results = root / "test_results" / "bench"
            _wait(results / _git(repo, "rev-parse", "HEAD") / "amd64.json", 60)  # warm-up
            latencies, shas = [], []
            for i in range(commits):
                time.sleep(rng.uniform(0.2, 0.6))
                _git(repo, "commit", "-q", "--allow-empty", "-m", f"bench {i}")
                committed = time.monotonic()
                sha = _git(repo, "rev-parse", "HEAD")
                latencies.append(_wait(results / sha / "amd64.json", 60 + poll_interval * 4) - committed)
                shas.append(sha)
            if inspect is not None:
                inspect(root, shas)
            return latencies
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=30)


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
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    figures = summarise(measure(args.commits, args.poll_interval, not args.no_watch, args.seed))
    mode = f"{'poll only' if args.no_watch else 'watch trigger'}, poll_interval {args.poll_interval:g} s"
    print(f"commit-to-result latency, no-op test, {mode}, {figures['n']} commits:")
    print(f"  median {figures['median_ms']:.0f} ms   p95 {figures['p95_ms']:.0f} ms   "
          f"min {figures['min_ms']:.0f} ms   max {figures['max_ms']:.0f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"mode": mode, **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
