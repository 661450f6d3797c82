"""Memory: each daemon's resident size idle, and after 1,000 jobs.

    .venv/bin/python -m bench.memory [--jobs 1000] [--json FILE]

Real daemons on a local repository, test command `true`, one runner. RSS is read from
/proc after the warm-up result (idle, 2 s later), then after `--jobs` commits pushed at
once have all been tested (current size, and the peak: VmHWM). The runner's figure is
its own process; its guard (one small Python that kills the jobs if the runner dies) is
shown beside it. The dispatcher under 1,000 connected runners is bench.capacity's
figure. One run: resident sizes hardly move between runs.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.rig import ROOT, children, daemons, git, new_repo, rss_mib, wait_file, write_config, write_json


def _commits(repo: Path, count: int) -> list[str]:
    """`count` empty commits on main at once, made by fast-import (seconds, not minutes)."""
    head = git(repo, "rev-parse", "HEAD")
    lines = []
    for i in range(count):
        message = f"memory {i}".encode()
        parent = head if i == 0 else f":{i}"
        lines.append(f"commit refs/heads/side\nmark :{i + 1}\n"
                     f"committer Bench <bench@example.invalid> {1700000000 + i} +0000\n"
                     f"data {len(message)}\n{message.decode()}\nfrom {parent}\n\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input="".join(lines).encode(), check=True)
    shas = git(repo, "rev-list", "main..side").split()
    git(repo, "merge", "-q", "--ff-only", "side")  # the push: main moves `count` commits at once
    return shas


def measure(jobs: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="polyarch-memory-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        config = write_config(root, repo, max_backfill=jobs + 10)
        with daemons(root, config) as procs:
            results = root / "test_results" / "bench"
            wait_file(results / git(repo, "rev-parse", "HEAD") / "amd64.json")
            time.sleep(2)
            guard = children(procs["runner"].pid)
            pids = {"dispatcher": procs["dispatcher"].pid, "observer": procs["observer"].pid,
                    "runner": procs["runner"].pid}
            if guard:
                pids["runner's guard"] = guard[0]
            figures = {name: {"idle_mib": rss_mib(pid)} for name, pid in pids.items()}
            for sha in _commits(repo, jobs):
                wait_file(results / sha / "amd64.json", timeout=900)
            time.sleep(1)
            for name, pid in pids.items():
                figures[name]["after_jobs_mib"] = rss_mib(pid)
                figures[name]["peak_mib"] = rss_mib(pid, "VmHWM")
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    figures = measure(args.jobs)
    print(f"resident memory (MiB), idle and after {args.jobs} jobs of `true`:")
    print(f"  {'daemon':<16} {'idle':>6} {'after':>6} {'peak':>6}")
    for name, row in figures.items():
        print(f"  {name:<16} {row['idle_mib']:>6.1f} {row['after_jobs_mib']:>6.1f} {row['peak_mib']:>6.1f}")
    write_json(args.json, {"jobs": args.jobs, "daemons": figures})


if __name__ == "__main__":
    main()
