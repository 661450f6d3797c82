"""SIGKILL of each daemon at seeded random moments during a burst: nothing lost, nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.conftest import record
from faults.harness import run_trials, seeds

pytestmark = pytest.mark.daemons

COMMITS = 50
RUNNERS = 2
SEED_BASE = {"dispatcher": 1000, "observer": 2000, "runner": 3000}


@pytest.mark.parametrize("daemon", ["dispatcher", "observer", "runner"])
def test_sigkill_during_a_burst_loses_and_duplicates_nothing(daemon: str, tmp_path: Path) -> None:
    trials = run_trials(tmp_path, daemon, seeds(SEED_BASE[daemon], 2, 20), COMMITS, RUNNERS)
    record("fault", f"SIGKILL {daemon} during a burst of {COMMITS} commits, {RUNNERS} runners", **trials.totals)
    assert not trials.failures, "\n".join(trials.failures)
