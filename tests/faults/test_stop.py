"""SIGTERM to each daemon under load: it exits 0 well within systemd's stop timeout, loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch
from faults.conftest import record, scale
from faults.harness import run_kill_trial, stop_timeout

pytestmark = pytest.mark.daemons

COMMITS = 50


@pytest.mark.parametrize("daemon", ["dispatcher", "observer", "runner"])
def test_sigterm_under_load_stops_in_time_and_loses_nothing(daemon: str, tmp_path: Path) -> None:
    failures, stops = [], []
    totals = {"trials": 0, "commits": 0, "results": 0, "lost": 0, "duplicated": 0}
    fixed = os.environ.get("POLYARCH_FAULT_SEED")
    for seed in [int(fixed)] if fixed else [5000 + i for i in range(scale(1, 5))]:
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        env = Polyarch(root, GitRepo(root / "upstream"))
        try:
            check = run_kill_trial(env, daemon, seed, commits=COMMITS, graceful=True)
        finally:
            env.close()
        stops += check.stop_seconds
        totals["trials"] += 1
        totals["commits"] += check.commits
        totals["results"] += check.results
        totals["lost"] += len(check.lost)
        totals["duplicated"] += len(check.duplicated)
        if not check.ok:
            failures.append(f"seed {seed}: lost {check.lost}, duplicated {check.duplicated}, "
                            f"exit codes {check.bad_exits} (logs in {root})")
    record("fault", f"SIGTERM {daemon} under load ({COMMITS} commits)", **totals,
           max_stop_seconds=round(max(stops), 2))
    assert not failures, "\n".join(failures)
    assert max(stops) < stop_timeout(daemon)
