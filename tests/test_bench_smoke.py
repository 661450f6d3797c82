"""bench/ stays runnable: `python -m bench --quick` runs every benchmark for seconds and
must print and write each one's figures (the figures themselves are never asserted).
On a fresh clone the Buildbot baseline first installs Buildbot into bench/.buildbot from
PyPI, which is most of this test's time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_every_benchmark_runs_quickly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(tmp_path / "all.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "all.json").read_text())
    for mode in ("latency-watch", "latency-poll", "latency-idle"):
        f = figures[mode]
        assert f["n"] == 2 and 0 < f["min_ms"] <= f["median_ms"] <= f["max_ms"]
    assert figures["overhead"]["checkout"]["n"] == 2 and figures["overhead"]["overhead"]["median_ms"] > 0
    assert figures["observer-cost"]["repos"] == 5
    assert 0 < figures["observer-cost"]["idle_cpu_s_min"] <= figures["observer-cost"]["idle_cpu_s_max"]
    capacity = figures["capacity"]
    assert capacity["jobs_per_s_median"] > 0 and capacity["hold"]["heartbeats"] >= 10
    assert capacity["hold"]["lease_lost"] == 0 and capacity["hold"]["expired"] == 0
    [swarm] = figures["swarm"]["sizes"]
    assert swarm["runners"] == 20 and swarm["heartbeats"] > 0 and swarm["results_recorded"] == 20
    assert swarm["lease_lost"] == 0 and swarm["expired"] == 0 and swarm["holding"]["threads"] > 0
    backlog = figures["backlog"]
    assert backlog["queued"] == 700 and backlog["jobs"] == 70 and backlog["serving_s"] > 0
    burst = figures["burst"]
    assert len(burst) == 1 and burst[0]["commits"] == 3 and burst[0]["median_s"] > 0
    memory = figures["memory"]["daemons"]
    assert {"dispatcher", "observer", "runner", "runner's guard"} <= set(memory)
    assert all(0 < row["idle_mib"] and 0 < row["after_jobs_mib"] <= row["peak_mib"] for row in memory.values())
    buildbot = figures["buildbot"]
    assert buildbot["latency"]["n"] == 2 and buildbot["overhead"]["median_ms"] > 0
    assert buildbot["burst"]["commits"] == 3 and buildbot["burst"]["median_s"] > 0
    dashboard = figures["dashboard"]
    assert dashboard["long"]["commits"] == 500 and dashboard["long"]["median_ms"] > 0
    assert dashboard["long"]["pages_written"] == 4
    live = figures["live-log"]
    assert live["tty"]["lines"] == 2 and live["pipe"]["lines"] == 2 and live["tty"]["median_s"] is not None
    table = {row["figure"]: row for row in figures["table"]}
    assert table["latency, watch trigger"]["buildbot"] == buildbot["latency"]["median_ms"]
    assert table["overhead per job"]["ratio"] > 0
    assert figures["quick"] is True
    assert "median" in out.stdout and "figure (medians)" in out.stdout
