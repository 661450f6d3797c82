"""Every benchmark in one run: `.venv/bin/python -m bench [--quick]`.

Runs each module as its own process (so one's threads and memory do not colour the
next), prints their figures, then one table of polyarch beside Buildbot 4.3 and the
issue's targets, and writes everything to bench/results/all.json. `--quick` shrinks
every run to seconds (what CI's smoke test does); the figures are then only a sign of
life. The emulation benchmark runs when the arm64 root is built (root only). The
Buildbot baseline installs Buildbot into bench/.buildbot on its first run (PyPI).
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
from typing import Optional

from bench.rig import ROOT, write_json


FULL = {
    "latency-watch": ["bench.latency"],
    "latency-poll": ["bench.latency", "--no-watch", "--poll-interval", "1"],
    # Pushes as labs make them, minutes apart: each one after the dispatcher closed the
    # idle observer connection and after a poll (idle_timeout shortened to 3 s to wait less).
    "latency-idle": ["bench.latency", "--commits", "8", "--gap", "4", "--idle-timeout", "3", "--poll-interval", "2"],
    "overhead": ["bench.overhead"],
    "observer-cost": ["bench.observer_cost"],
    "capacity": ["bench.capacity"],
    "swarm": ["bench.swarm"],
    "backlog": ["bench.backlog"],
    "burst": ["bench.burst"],
    "emulation": ["bench.emulation"],
    "memory": ["bench.memory"],
    "buildbot": ["bench.buildbot"],
    "dashboard": ["bench.dashboard"],
    "live-log": ["bench.live_log"],
}
QUICK = {
    "latency-watch": ["--commits", "2"],
    "latency-poll": ["--commits", "2"],
    "latency-idle": ["--commits", "2"],
    "overhead": ["--commits", "2"],
    "observer-cost": ["--repos", "5", "--cycles", "2"],
    "capacity": ["--runners", "5", "--jobs", "50", "--repeat", "1", "--hold-runners", "10", "--hold-seconds", "2"],
    "swarm": ["--runners", "20", "--seconds", "2", "--heartbeat-timeout", "3"],
    "backlog": ["--queued", "700", "--results", "7000", "--jobs", "70"],
    "burst": ["--sizes", "3", "--runners", "1", "--tests", "true", "--repeat", "1"],
    "emulation": ["--runs", "1"],
    "memory": ["--jobs", "20"],
    "buildbot": ["--commits", "2", "--burst", "3", "--repeat", "1"],
    "dashboard": ["--commits", "500", "--baseline", "50", "--repeat", "3"],
    "live-log": ["--lines", "2"],
}


def _emulation_possible() -> bool:
    rootfs = Path(os.environ.get("POLYARCH_ROOTFS_ARM64", "/var/cache/polyarch/rootfs-arm64"))
    return os.geteuid() == 0 and (rootfs / "etc" / "polyarch-rootfs.json").exists()


Row = dict[str, object]


def _burst(figures: dict, commits: int, runners: int, test: str) -> Optional[dict]:
    for row in figures.get("burst", []):
        if row["commits"] == commits and row["runners"] == runners and row["test"] == test:
            return row
    return None


def table(figures: dict) -> list[Row]:
    """One row per figure: polyarch's median, Buildbot's when it has one, their ratio, the target."""
    rows: list[Row] = []

    def add(name: str, unit: str, ours: Optional[float], target: str, theirs: Optional[float] = None) -> None:
        if ours is None:
            return
        ratio = theirs / ours if theirs and ours else None
        rows.append({"figure": name, "unit": unit, "polyarch": ours, "buildbot": theirs, "ratio": ratio,
                     "target": target})

    bb = figures.get("buildbot", {})
    watch, poll = figures.get("latency-watch", {}), figures.get("latency-poll", {})
    add("latency, watch trigger", "ms", watch.get("median_ms"), "<= 100",
        bb.get("latency", {}).get("median_ms"))
    add("latency, poll only (1 s)", "ms", poll.get("median_ms"), "<= 600",
        bb.get("latency", {}).get("median_ms"))
    idle = figures.get("latency-idle", {})
    add("latency, pushes after an idle spell", "ms", idle.get("median_ms"),
        f"<= {watch['median_ms'] * 1.1:.0f} (watch + 10 %)" if watch.get("median_ms") else "watch + 10 %")
    add("overhead per job", "ms", figures.get("overhead", {}).get("overhead", {}).get("median_ms"), "<= 40",
        bb.get("overhead", {}).get("median_ms"))
    burst20 = _burst(figures, 20, 1, "true")
    add("burst of 20, `true`, 1 runner", "s", burst20 and burst20["median_s"], "<= 2",
        bb.get("burst", {}).get("median_s") if bb.get("burst", {}).get("commits") == 20 else None)
    for runners in (1, 4):
        row = _burst(figures, 20, runners, "sleep 0.2")
        add(f"utilisation, 20 x 0.2 s test, {runners} runner(s)", "%", row and row["utilisation"] * 100, ">= 90")
    cap = figures.get("capacity", {})
    add("capacity, 100 runners", "jobs/s", cap.get("jobs_per_s_median"), ">= 500")
    hold = cap.get("hold", {})
    if hold:
        add(f"{hold['runners']} runners held: leases wrongly lost or expired", "",
            float(hold["lease_lost"] + hold["expired"]), "0")
        add(f"dispatcher RSS, {hold['runners']} runners connected", "MiB", hold.get("rss_under_load_mib"), "<= 60")
    for size in figures.get("swarm", {}).get("sizes", []):
        n = size["runners"]
        target = "<= 60" if n == 1000 else "<= 200" if n == 10000 else ""
        add(f"dispatcher RSS, {n:,} runners waiting for work", "MiB", size["waiting"]["rss_mib"], target)
        add(f"dispatcher RSS, {n:,} runners holding a job each", "MiB", size["holding"]["rss_mib"], target)
        add(f"{n:,} runners heartbeating: leases lost or expired", "", float(size["lease_lost"] + size["expired"]),
            "0")
    backlog = figures.get("backlog", {})
    if backlog:
        what = f"{backlog['queued']:,} queued / {backlog['results']:,} results"
        add(f"{what}: restart to first lease", "s", backlog["serving_s"], "<= 5")
        add(f"{what}: lease p99", "ms", backlog["lease_p99_ms"], "<= 50")
        add(f"{what}: result p99", "ms", backlog["result_p99_ms"], "<= 50")
        add(f"{what}: status p50", "ms", backlog["status_p50_ms"], "")
    mem = figures.get("memory", {}).get("daemons", {})
    for name, target in (("dispatcher", "<= 60"), ("observer", "<= 50"), ("runner", "<= 40")):
        if name in mem:
            jobs = figures["memory"]["jobs"]
            add(f"{name} RSS after {jobs} jobs", "MiB", mem[name]["after_jobs_mib"], target)
    if "runner's guard" in mem:
        add("runner's guard RSS", "MiB", mem["runner's guard"]["after_jobs_mib"], "")
    obs = figures.get("observer-cost", {})
    add("observer cycle, 50 repos x 5 branches, idle", "CPU s", obs.get("idle_cpu_s_median"), "<= 0.3")
    add("observer cycle, one new commit", "CPU s", obs.get("one_new_cpu_s_median"), "")
    emu = figures.get("emulation", {}).get("unittest suite", {})
    add("emulated arm64 / native, unittest suite", "x", emu.get("ratio"), "")
    dash = figures.get("dashboard", {})
    add(f"dashboard pages after one result, {dash.get('long', {}).get('commits', 0):,} commits", "ms",
        dash.get("long", {}).get("median_ms"), "")
    live = figures.get("live-log", {}).get("tty", {})
    add("live log: a line printed to a follower's screen", "ms",
        live["median_s"] * 1000 if live.get("median_s") is not None else None, "<= 1000")
    return rows


def render(rows: list[Row]) -> str:
    def num(value: object) -> str:
        if value is None:
            return "-"
        assert isinstance(value, (int, float))  # noqa: S101 - the table holds numbers or None
        return f"{value:.3g}" if value < 10 else f"{value:.0f}"

    lines = [f"{'figure (medians)':<52} {'unit':>6} {'polyarch':>9} {'Buildbot':>9} {'ratio':>7} {'target':>7}"]
    for row in rows:
        ratio = f"{row['ratio']:.0f}x" if row["ratio"] else "-"
        lines.append(f"{row['figure']:<52} {row['unit']:>6} {num(row['polyarch']):>9} {num(row['buildbot']):>9} "
                     f"{ratio:>7} {row['target']:>7}")
    return "\n".join(lines)


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
    figures["table"] = table(figures)
    print()
    print(render(figures["table"]))
    write_json(args.json, figures)
    print(f"all figures in {args.json}")


if __name__ == "__main__":
    main()
