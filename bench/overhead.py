"""Overhead per job: what polyarch adds around the test command, step by step.

    .venv/bin/python -m bench.overhead [--commits 20] [--rootfs DIR] [--json FILE]

Real daemons, a local repository, a warm mirror, the test command `true`, commits one
at a time (the latency benchmark's run). The runner logs each job's steps (`timing`
lines): checkout (refs copied into its mirror + `git checkout` in the reused worktree,
after finishing the previous job's background `git clean`), prepare (settings,
environment), run (spawn + command + exit seen), deliver (result to the dispatcher, acknowledged
once durable in SQLite); the result file's mtime minus the command's end gives deliver
plus the dispatcher's file writes. The command's own time (fastest `sh -c true` of 20)
is taken out of run. Medians with min/max. With --rootfs, the runner serves the root's
architecture and runs each job in it (as root; under qemu-user for another architecture),
and the command's own time is the root's `sh -c true`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import time
from pathlib import Path
from typing import Optional

from bench.latency import measure
from bench.rig import ROOT, command_samples, write_json
from runner.rootfs import read_info

TIMING = re.compile(r"timing bench ([0-9a-f]{12}): (.*)")


def collect(commits: int, seed: int, rootfs: Optional[Path] = None) -> dict[str, dict[str, float]]:
    steps: dict[str, list[float]] = {}

    def inspect(root: Path, shas: list[str]) -> None:
        short = {s[:12] for s in shas}
        # The runner logs a job's timing after its cleanup, i.e. just after the result file
        # appears: wait for the last one.
        deadline = time.monotonic() + 10
        while (not short <= {m.group(1) for m in TIMING.finditer((root / "runner.log").read_text())}
               and time.monotonic() < deadline):
            time.sleep(0.01)
        for m in TIMING.finditer((root / "runner.log").read_text()):
            if m.group(1) not in short:
                continue  # the warm-up job
            for part in m.group(2).split(", "):
                name, value, _ = part.split(" ")
                steps.setdefault(name, []).append(float(value))
        for sha in shas:
            path = root / "test_results" / "bench" / sha / f"{arch}.json"
            stamp = json.loads(path.read_text())["finished_at"]  # ISO 8601, milliseconds, UTC
            finished = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            steps.setdefault("deliver+write", []).append((path.stat().st_mtime - finished) * 1000)

    arch = read_info(rootfs).arch.value if rootfs is not None else "amd64"
    measure(commits, poll_interval=5.0, watch=True, seed=seed, inspect=inspect, arch=arch,
            runner_args=("--rootfs", str(rootfs)) if rootfs is not None else ())
    samples = [s * 1000 for s in command_samples(rootfs=rootfs)]
    command_ms = min(samples)
    steps["run-minus-command"] = [v - command_ms for v in steps["run"]]
    per_job = [c + p + r + d for c, p, r, d in zip(steps["checkout"], steps["prepare"], steps["run-minus-command"],
                                                  steps["deliver+write"])]
    steps["overhead"] = per_job
    out = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "n": len(v)}
           for k, v in steps.items()}
    out["command"] = {"median_ms": statistics.median(samples), "min_ms": command_ms, "max_ms": max(samples),
                      "n": len(samples)}
    # The same overhead with the command's median taken out instead of its fastest time:
    # what a job costs beyond the command as it usually runs (qemu's start varies by 5 ms).
    typical = statistics.median(samples) - command_ms
    out["overhead-vs-median-command"] = {k: v - typical for k, v in out["overhead"].items() if k != "n"}
    out["overhead-vs-median-command"]["n"] = out["overhead"]["n"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rootfs", type=Path, help="run the jobs in this root (another architecture's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = collect(args.commits, args.seed, args.rootfs)
    where = f" in {args.rootfs}" if args.rootfs else ""
    print(f"overhead per job{where}, test command `true`, {args.commits} jobs (ms):")
    for name in ("checkout", "prepare", "run", "command", "run-minus-command", "deliver", "deliver+write",
                 "cleanup", "overhead", "overhead-vs-median-command"):
        f = figures[name]
        print(f"  {name:18} median {f['median_ms']:6.1f}   min {f['min_ms']:6.1f}   max {f['max_ms']:6.1f}")
    print("  (overhead = checkout + prepare + run-minus-command + deliver+write, the command's fastest time taken\n"
          "   out of run; the last line takes its median out instead. cleanup runs after the ack)")
    write_json(args.json or ROOT / "bench" / "results" / ("overhead-rootfs.json" if args.rootfs else "overhead.json"),
               figures)


if __name__ == "__main__":
    main()
