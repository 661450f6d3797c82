"""SIGKILL of each daemon at seeded random moments during a burst: nothing lost, nothing twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dispatcher.common.files import TMP_PREFIX
from faults.conftest import record
from faults.harness import left_behind, run_trials, seeds

pytestmark = pytest.mark.daemons

COMMITS = 50
RUNNERS = 2
SEED_BASE = {"dispatcher": 1000, "observer": 2000, "runner": 3000}


@pytest.mark.parametrize("daemon", ["dispatcher", "observer", "runner"])
def test_sigkill_during_a_burst_loses_and_duplicates_nothing(daemon: str, tmp_path: Path) -> None:
    trials = run_trials(tmp_path, daemon, seeds(SEED_BASE[daemon], 2, 20), COMMITS, RUNNERS)
    record("fault", f"SIGKILL {daemon} during a burst of {COMMITS} commits, {RUNNERS} runners", **trials.totals)
    assert not trials.failures, "\n".join(trials.failures)


def test_the_check_tells_a_temporary_left_behind_from_one_in_flight(tmp_path: Path) -> None:
    """The trials' check can fail: a temporary nobody removes is reported (with its age
    and size), one whose writer renames it meanwhile is not."""
    stuck, flying = tmp_path / (TMP_PREFIX + "stuck"), tmp_path / (TMP_PREFIX + "flying")
    stuck.write_bytes(b"half")
    flying.write_bytes(b"")
    threading.Timer(0.2, flying.unlink).start()
    assert left_behind(flying, watch=2.0) == ""
    reported = left_behind(stuck, watch=0.3)
    assert reported.startswith(str(stuck)) and "4 bytes" in reported and "still there" in reported
