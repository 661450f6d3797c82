"""Every benchmark in one run: `.venv/bin/python -m bench [--quick]`.

Runs each module as its own process (so one's threads and memory do not colour the
next), prints their figures, and writes them all to bench/results/all.json. `--quick`
shrinks every run to seconds (what CI's smoke tests do); the figures are then only a
sign of life. The emulation benchmark runs when the arm64 root is built (root only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.rig import ROOT, write_json


FULL = {
    "latency-watch": ["bench.latency"],
    "latency-poll": ["bench.latency", "--no-watch", "--poll-interval", "1"],
    "overhead": ["bench.overhead"],
    "observer-cost": ["bench.observer_cost"],
    "capacity": ["bench.capacity"],
    "burst": ["bench.burst"],
    "emulation": ["bench.emulation"],
}
QUICK = {
    "latency-watch": ["--commits", "2"],
    "latency-poll": ["--commits", "2"],
    "overhead": ["--commits", "2"],
    "observer-cost": ["--repos", "5", "--cycles", "2"],
    "capacity": ["--runners", "5", "--jobs", "50", "--repeat", "1", "--hold-runners", "10", "--hold-seconds", "2"],
    "burst": ["--sizes", "3", "--runners", "1", "--tests", "true", "--repeat", "1"],
    "emulation": ["--runs", "1"],
}


def _emulation_possible() -> bool:
    rootfs = Path(os.environ.get("POLYARCH_ROOTFS_ARM64", "/var/cache/polyarch/rootfs-arm64"))
    return os.geteuid() == 0 and (rootfs / "etc" / "polyarch-rootfs.json").exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: a sign of life only")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "all.json")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="polyarch-bench-all-") as tmp:
        for name, command in FULL.items():
            if name == "emulation" and not _emulation_possible():
                print(f"== {name}: not run (needs root and the arm64 root: sudo bash scripts/setup.sh)")
                continue
            out = Path(tmp) / f"{name}.json"
            argv = [sys.executable, "-m", *command, *(QUICK[name] if args.quick else []), "--json", str(out)]
            began = time.monotonic()
            print(f"== {name}: {' '.join(argv[2:-2])}", flush=True)
            proc = subprocess.run(argv, cwd=ROOT, text=True, capture_output=True)
            sys.stdout.write(proc.stdout)
            if proc.returncode != 0:
                raise SystemExit(f"bench: {name} failed:\n{proc.stderr}")
            figures[name] = json.loads(out.read_text())
            print(f"   ({time.monotonic() - began:.0f} s)")
    figures["quick"] = args.quick
    write_json(args.json, figures)
    print(f"all figures in {args.json}")


if __name__ == "__main__":
    main()
