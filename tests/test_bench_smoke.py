"""bench/ stays runnable: a two-commit latency run must print and write its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_latency_benchmark_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.latency", "--commits", "2", "--json", str(tmp_path / "l.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "median" in out.stdout
    figures = json.loads((tmp_path / "l.json").read_text())
    assert figures["n"] == 2 and 0 < figures["min_ms"] <= figures["median_ms"] <= figures["max_ms"]


def test_capacity_benchmark_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.capacity", "--runners", "5", "--jobs", "50", "--repeat", "1",
                          "--hold-runners", "10", "--hold-seconds", "2", "--json", str(tmp_path / "c.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["jobs_per_s_median"] > 0 and figures["hold"]["heartbeats"] >= 10
    assert figures["hold"]["lease_lost"] == 0 and figures["hold"]["expired"] == 0


def test_observer_cost_benchmark_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.observer_cost", "--repos", "3", "--branches", "2",
                          "--cycles", "2", "--json", str(tmp_path / "o.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "o.json").read_text())
    assert figures["repos"] == 3 and 0 < figures["idle_cpu_s_min"] <= figures["idle_cpu_s_max"]


def test_overhead_benchmark_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.overhead", "--commits", "2", "--json", str(tmp_path / "o.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "o.json").read_text())
    assert figures["checkout"]["n"] == 2 and figures["overhead"]["median_ms"] > 0
