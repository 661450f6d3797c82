"""SIGKILL of each daemon at seeded random moments during a burst: nothing lost, nothing twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch
from faults.conftest import record, scale
from faults.harness import run_kill_trial

pytestmark = pytest.mark.daemons

COMMITS = 50
RUNNERS = 2


def _seeds(daemon: str) -> list[int]:
    fixed = os.environ.get("POLYARCH_FAULT_SEED")
    if fixed:
        return [int(fixed)]
    base = {"dispatcher": 1000, "observer": 2000, "runner": 3000}[daemon]
    return [base + i for i in range(scale(2, 20))]


@pytest.mark.parametrize("daemon", ["dispatcher", "observer", "runner"])
def test_sigkill_during_a_burst_loses_and_duplicates_nothing(daemon: str, tmp_path: Path) -> None:
    failures = []
    totals = {"trials": 0, "commits": 0, "results": 0, "lost": 0, "duplicated": 0, "partial": 0,
              "temporaries": 0, "kills": 0}
    for seed in _seeds(daemon):
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        env = Polyarch(root, GitRepo(root / "upstream"))
        try:
            check = run_kill_trial(env, daemon, seed, commits=COMMITS, runners=RUNNERS)
        finally:
            env.close()
        totals["trials"] += 1
        for key in ("commits", "results", "kills"):
            totals[key] += getattr(check, key)
        for key in ("lost", "duplicated", "partial", "temporaries"):
            totals[key] += len(getattr(check, key))
        if not check.ok:
            failures.append(f"seed {seed}: lost {check.lost}, duplicated {check.duplicated}, "
                            f"partial {check.partial}, temporaries {check.temporaries} (logs in {root})")
    record("fault", f"SIGKILL {daemon} during a burst of {COMMITS} commits, {RUNNERS} runners", **totals)
    assert not failures, "\n".join(failures)
