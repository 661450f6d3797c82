"""Bursts: N commits in one push, R runners, time until every result is written.

    .venv/bin/python -m bench.burst [--sizes 20 200] [--runners 1 4] [--tests true "sleep 0.2"]
                                    [--repeat 3] [--json FILE]

For each combination: real daemons on a fresh local repository, N commits made in a
side branch and pushed to main at once (one ref update, as a push of N commits is),
then the time from that update to the last `<arch>.json`. Utilisation is the ideal
time (N × the command's own time / R) over the measured time: how much of the runners'
time went to tests rather than to polyarch. Medians with min/max over `--repeat` runs.
`max_backfill` is raised above N so every commit is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.latency import ROOT, _git


def _command_seconds(test: str, runs: int = 10) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(["sh", "-c", test], check=True)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def run_once(size: int, runners: int, test: str) -> float:
    with tempfile.TemporaryDirectory(prefix="polyarch-burst-") as tmp:
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
            poll_interval = 5
            max_backfill = {size + 10}
            [runner]
            dispatcher = "127.0.0.1:0"
            [[repos]]
            name = "bench"
            url = "{repo}"
            test_command = "{test}"
            """))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        procs = []
        try:
            daemons = [("dispatcher", []), ("observer", [])] + [("runner", ["--name", f"r{i}"]) for i in range(runners)]
            for name, extra in daemons:
                log = open(root / f"{name}{extra[-1] if extra else ''}.log", "wb")
                procs.append(subprocess.Popen([sys.executable, "-m", name, "serve", "--config", str(config), *extra],
                                              cwd=root, stdout=log, stderr=log, env=env))
                log.close()
                if name == "dispatcher":
                    _wait_for(root / "var/dispatcher/address")
            results = root / "test_results" / "bench"
            _wait_for(results / _git(repo, "rev-parse", "HEAD") / "amd64.json")  # warm: mirrors made
            _git(repo, "checkout", "-q", "-b", "side")
            for i in range(size):
                _git(repo, "commit", "-q", "--allow-empty", "-m", f"burst {i}")
            shas = _git(repo, "rev-list", "main..side").split()
            _git(repo, "checkout", "-q", "main")
            pushed = time.monotonic()
            _git(repo, "merge", "-q", "--ff-only", "side")  # the push: main moves N commits at once
            for sha in shas:
                _wait_for(results / sha / "amd64.json", timeout=600)
            return time.monotonic() - pushed
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {path} did not appear within {timeout} s")
        time.sleep(0.005)


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
        own = _command_seconds(test)
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
