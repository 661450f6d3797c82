"""Two dispatchers on one PostgreSQL state and one results folder, faults at seeded
moments during a burst: either dispatcher SIGKILLed (and started again), or PostgreSQL
itself stopped (-m immediate, as a crash) and started again. Runner r1 and the observer
use dispatcher A first, runner r2 uses B first; each moves to the other when its own is
gone. The check is the kill trials' (harness.py): every commit's result exactly once,
whole whenever read, no temporary left.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch
from faults.conftest import record, scale
from faults.harness import Check, logged_twice, burst_with_faults, seeds, tally

pytestmark = pytest.mark.daemons

COMMITS = scale(20, 50)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """Dispatchers A and B sharing `url` and one results folder, with their clients."""

    def __init__(self, root: Path, url: str) -> None:
        self.repo = GitRepo(root / "upstream")
        self.first = self.repo.commit("exit 0")  # the branch's first sighting: its head only
        self.results = root / "results"
        ports = _port(), _port()
        self.envs: dict[str, Polyarch] = {}
        for name, order in (("a", ports), ("b", ports[::-1])):
            (root / name).mkdir()
            secret = f'\ntoken_file = "{root / "a" / "var" / "secret"}"' if name == "b" else ""
            self.envs[name] = Polyarch(root / name, self.repo, state=url, listen=f"127.0.0.1:{order[0]}",
                                       clients="[" + ", ".join(f'"127.0.0.1:{p}"' for p in order) + "]",
                                       heartbeat_timeout=2, max_attempts=10,
                                       dispatcher_settings=f'results_dir = "{self.results}"' + secret)
        self.dispatchers = {name: env.dispatcher() for name, env in self.envs.items()}
        self.envs["a"].observer()
        self.envs["a"].runner("r1")
        self.envs["b"].runner("r2")

    def result(self, sha: str) -> bool:
        return (self.results / "demo" / sha / "amd64.json").exists()

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def trial(root: Path, url: str, seed: int, fault) -> Check:
    """A burst of COMMITS with `fault(pair, rng)` injected at 1-3 seeded moments."""
    rng = random.Random(seed)
    pair = Pair(root, url)
    check = Check()
    try:
        deadline = time.monotonic() + 60
        while not pair.result(pair.first) and time.monotonic() < deadline:
            time.sleep(0.05)

        def inject() -> None:
            fault(pair, rng)
            check.kills += 1

        moments = [rng.uniform(0.0, 3.0) for _ in range(rng.randint(1, 3))]
        shas, watcher = burst_with_faults(pair.repo, pair.results, COMMITS, moments, inject)
        daemons = [d for env in pair.envs.values() for d in env.daemons]
        tally(check, watcher, pair.results, shas, [pair.first], logged_twice(daemons))
    finally:
        pair.close()
    return check


def kill_a_dispatcher(pair: Pair, rng: random.Random) -> None:
    name = rng.choice(sorted(n for n, d in pair.dispatchers.items() if d.alive))
    pair.dispatchers[name].kill()
    time.sleep(rng.uniform(0.0, 1.0))
    pair.dispatchers[name] = pair.envs[name].dispatcher()


def run(tmp_path: Path, pg_cluster, name: str, base: int, short: int, long: int,
        fault) -> tuple[dict[str, int], list[str]]:
    totals = dict.fromkeys(("trials", "commits", "results", "kills", "lost", "duplicated", "partial",
                            "temporaries"), 0)
    failures = []
    for seed in seeds(base, short, long):
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        check = trial(root, pg_cluster.create_database(f"{name}_{seed}"), seed, fault)
        totals["trials"] += 1
        for key in ("commits", "results", "kills"):
            totals[key] += getattr(check, key)
        for key in ("lost", "duplicated", "partial", "temporaries"):
            totals[key] += len(getattr(check, key))
        if not check.ok:
            failures.append(f"seed {seed}: lost {check.lost}, duplicated {check.duplicated}, partial "
                            f"{check.partial}, temporaries {check.temporaries} (logs in {root})")
    return totals, failures


def test_either_of_two_dispatchers_sigkilled_during_a_burst(tmp_path: Path, pg_cluster) -> None:
    totals, failures = run(tmp_path, pg_cluster, "kill", 5000, 2, 10, kill_a_dispatcher)
    record("fault", f"SIGKILL either of 2 dispatchers on one PostgreSQL during a burst of {COMMITS} commits, "
                    "2 runners", **totals)
    assert not failures, "\n".join(failures)


def test_postgresql_crashed_and_restarted_during_a_burst(tmp_path: Path) -> None:
    from bench.postgres import Cluster

    cluster = Cluster().init().start()  # its own: it is stopped and started under load

    def crash(pair: Pair, rng: random.Random) -> None:
        cluster.stop("immediate")
        time.sleep(rng.uniform(0.5, 3.0))  # past heartbeat_timeout (2 s) at times
        cluster.start()

    try:
        totals, failures = run(tmp_path, cluster, "crash", 6000, 1, 5, crash)
    finally:
        cluster.close()
    record("fault", f"PostgreSQL stopped (-m immediate) and started again during a burst of {COMMITS} commits, "
                    "2 dispatchers, 2 runners", **totals)
    assert not failures, "\n".join(failures)
