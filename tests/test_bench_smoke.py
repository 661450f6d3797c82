"""bench/ stays runnable: `python -m bench --quick` runs every benchmark for seconds and
must print and write each one's figures (the figures themselves are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_every_benchmark_runs_quickly(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(tmp_path / "all.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "all.json").read_text())
    for mode in ("latency-watch", "latency-poll"):
        f = figures[mode]
        assert f["n"] == 2 and 0 < f["min_ms"] <= f["median_ms"] <= f["max_ms"]
    assert figures["overhead"]["checkout"]["n"] == 2 and figures["overhead"]["overhead"]["median_ms"] > 0
    assert figures["observer-cost"]["repos"] == 5
    assert 0 < figures["observer-cost"]["idle_cpu_s_min"] <= figures["observer-cost"]["idle_cpu_s_max"]
    capacity = figures["capacity"]
    assert capacity["jobs_per_s_median"] > 0 and capacity["hold"]["heartbeats"] >= 10
    assert capacity["hold"]["lease_lost"] == 0 and capacity["hold"]["expired"] == 0
    burst = figures["burst"]
    assert len(burst) == 1 and burst[0]["commits"] == 3 and burst[0]["median_s"] > 0
    assert figures["quick"] is True
    assert "median" in out.stdout
