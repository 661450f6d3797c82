"""SIGTERM to each daemon under load: it exits 0 well within systemd's stop timeout, loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults.conftest import record
from faults.harness import run_trials, seeds, stop_timeout

pytestmark = pytest.mark.daemons

COMMITS = 50


@pytest.mark.parametrize("daemon", ["dispatcher", "observer", "runner"])
def test_sigterm_under_load_stops_in_time_and_loses_nothing(daemon: str, tmp_path: Path) -> None:
    trials = run_trials(tmp_path, daemon, seeds(5000, 1, 5), COMMITS, graceful=True)
    record("fault", f"SIGTERM {daemon} under load ({COMMITS} commits)", **trials.totals,
           max_stop_seconds=round(max(trials.stop_seconds), 2))
    assert not trials.failures, "\n".join(trials.failures)
    assert max(trials.stop_seconds) < stop_timeout(daemon)
