"""Bursts: N commits in one push, R runners, time until every result is written.

    .venv/bin/python -m bench.burst [--sizes 20 200] [--runners 1 4] [--tests true "sleep 0.2"]
                                    [--repeat 3] [--json FILE]

For each combination: real daemons on a fresh local repository, each runner warmed by
one job (its mirror and worktree made, as in a lab), then N commits made in a side
branch and pushed to main at once (one ref update, as a push of N commits is), then
the time from that update to the last `<arch>.json`. Utilisation is the ideal
time (N × the command's own time / R) over the measured time: how much of the runners'
time went to tests rather than to polyarch. Medians with min/max over `--repeat` runs.
`max_backfill` is raised above N so every commit is tested.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.rig import ROOT, command_seconds, daemons, git, new_repo, wait_file, write_config, write_json


def run_once(size: int, runners: int, test: str) -> float:
    with tempfile.TemporaryDirectory(prefix="polyarch-burst-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        config = write_config(root, repo, test_command=test, max_backfill=size + 10)
        with daemons(root, config, runners=runners):
            results = root / "test_results" / "bench"
            wait_file(results / git(repo, "rev-parse", "HEAD") / "amd64.json")
            # Warm, as a lab's runners are: one commit per runner, pushed at once, gives each
            # its mirror and worktree (a first checkout makes both: 30-50 ms, once per runner).
            for i in range(runners):
                git(repo, "commit", "-q", "--allow-empty", "-m", f"warm {i}")
            wait_file(results / git(repo, "rev-parse", "HEAD") / "amd64.json")
            for sha in git(repo, "rev-list", f"HEAD~{runners}..HEAD").split():
                wait_file(results / sha / "amd64.json")
            git(repo, "checkout", "-q", "-b", "side")
            for i in range(size):
                git(repo, "commit", "-q", "--allow-empty", "-m", f"burst {i}")
            shas = git(repo, "rev-list", "main..side").split()
            git(repo, "checkout", "-q", "main")
            pushed = time.monotonic()
            git(repo, "merge", "-q", "--ff-only", "side")  # the push: main moves N commits at once
            for sha in shas:
                wait_file(results / sha / "amd64.json", timeout=600)
            return time.monotonic() - pushed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tests", nargs="+", default=["true", "sleep 0.2"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "burst.json")
    args = parser.parse_args()
    rows = []
    print(f"{'commits':>7} {'runners':>7} {'test':>10} {'median s':>9} {'min':>7} {'max':>7} {'utilisation':>11}")
    for test in args.tests:
        own = command_seconds(test)
        for size in args.sizes:
            for runners in args.runners:
                times = sorted(run_once(size, runners, test) for _ in range(args.repeat))
                median = statistics.median(times)
                ideal = size * own / runners
                row = {"commits": size, "runners": runners, "test": test, "median_s": median, "min_s": times[0],
                       "max_s": times[-1], "command_s": own, "utilisation": ideal / median}
                rows.append(row)
                print(f"{size:>7} {runners:>7} {test:>10} {median:>9.2f} {times[0]:>7.2f} {times[-1]:>7.2f} "
                      f"{row['utilisation']:>10.0%}", flush=True)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
