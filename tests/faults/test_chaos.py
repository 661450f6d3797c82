"""Chaos: at seeded random moments during a burst, any daemon is SIGKILLed (and started
again) or stopped with SIGSTOP for up to 2 s. Nothing may be lost or written twice."""

from __future__ import annotations

from pathlib import Path

from faults.conftest import record, scale
from faults.harness import CHAOS, run_trials, seeds

COMMITS = scale(20, 30)


def test_random_sigkill_and_sigstop_of_every_daemon_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    trials = run_trials(tmp_path, CHAOS, seeds(7000, 1, 11), COMMITS, 2)
    record("fault", f"chaos: SIGKILL or SIGSTOP (up to 2 s) of any daemon during a burst of {COMMITS} commits, "
                    "2 runners", **trials.totals)
    assert trials.failures == [], "\n".join(trials.failures)
