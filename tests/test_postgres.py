"""The dispatcher on PostgreSQL, with real processes: the server itself restarted under
a burst, a second dispatcher on the same database, a bad state setting. (The pipeline's
guarantee tests in test_pipeline.py and the store's in test_store.py and test_hub.py run
on both backends through the `backend` fixture.)"""

from __future__ import annotations

import json
import random
import signal
import socket
import time
from pathlib import Path

import pytest

from bench.postgres import INSTALL, Cluster, binaries
from conftest import GitRepo, Polyarch, skip_unless_ci, wait_for

pytestmark = pytest.mark.daemons


@pytest.fixture
def own_cluster():
    """A cluster of this test's own: it gets stopped and started under load."""
    if binaries() is None:
        skip_unless_ci(f"PostgreSQL is not installed: {INSTALL}")
    cluster = Cluster().init().start()
    yield cluster
    cluster.close()


def test_postgresql_restarted_mid_burst_loses_nothing_and_the_dispatcher_keeps_serving(
        tmp_path: Path, repo: GitRepo, own_cluster: Cluster) -> None:
    env = Polyarch(tmp_path, repo, state=own_cluster.create_database())
    try:
        repo.commit("exit 0")
        dispatcher = env.dispatcher()
        env.observer()
        env.runner("r1")
        env.runner("r2")
        wait_for(lambda: env.result(repo.git("rev-parse", "HEAD")), what="first result")
        burst = repo.burst(20, lambda i: "sleep 0.1")
        wait_for(lambda: sum(1 for s in burst if env.result(s)) >= 3, what="a few burst results")
        own_cluster.stop("immediate")  # a crash of the server: no checkpoint
        time.sleep(2)  # results, leases and the observer's reports meet `unavailable` meanwhile
        later = repo.burst(3)
        own_cluster.start()
        results = env.wait_results(burst + later, timeout=120)
        assert all(r["status"] == "passed" for r in results.values())
        # None ran twice: the leases got the outage back (the runners could not reach the
        # state through the dispatcher either), so the results they kept were taken.
        assert [r["attempt"] for r in results.values()] == [1] * len(results)
        # Exactly one result per commit, and the same dispatcher process served throughout.
        folders = [p for p in (env.results / "demo").iterdir() if p.is_dir()]
        assert len(folders) == 24
        assert dispatcher.alive
        assert "cannot reach the state database" in dispatcher.log() or \
            "cannot write the state database" in dispatcher.log() or \
            "cannot read the state database" in dispatcher.log()
    finally:
        env.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("victim, seed", [("publisher", 1), ("other", 2), ("hung publisher", 3)])
def test_two_dispatchers_on_one_database_either_killed_mid_burst_lose_nothing(
        tmp_path: Path, repo: GitRepo, pg_cluster: Cluster, victim: str, seed: int) -> None:
    """Two dispatchers share one PostgreSQL state and one results folder; r1 and the
    observer use A first, r2 uses B first. At a seeded moment of a burst one of them is
    killed with SIGKILL (the one publishing the files, or the other), or the publishing
    one hangs (SIGSTOP) for twice heartbeat_timeout, then goes on (SIGCONT)."""
    url = pg_cluster.create_database(f"two_{victim.replace(' ', '_')}")
    ports = _free_port(), _free_port()
    results = tmp_path / "results"
    settings = f'results_dir = "{results}"'
    envs = []
    for name, order in (("a", ports), ("b", ports[::-1])):
        (tmp_path / name).mkdir()
        secret = f'\ntoken_file = "{tmp_path / "a" / "var" / "secret"}"' if name == "b" else ""
        envs.append(Polyarch(tmp_path / name, repo, state=url, listen=f"127.0.0.1:{order[0]}",
                             clients="[" + ", ".join(f'"127.0.0.1:{p}"' for p in order) + "]",
                             dispatcher_settings=settings + secret))
    a, b = envs
    try:
        first = repo.commit("exit 0")
        dispatchers = {"a": a.dispatcher(), "b": b.dispatcher()}  # a starts first: it publishes
        a.observer()
        a.runner("r1")
        b.runner("r2")
        wait_for(lambda: (results / "demo" / first / "amd64.json").exists(), what="first result")
        burst = repo.burst(20, lambda i: "sleep 0.1")
        done = lambda: sum(1 for s in burst if (results / "demo" / s / "amd64.json").exists())  # noqa: E731
        moment = random.Random(seed).randint(2, 8)
        wait_for(lambda: done() >= moment, what=f"{moment} burst results")
        if victim == "hung publisher":
            dispatchers["a"].signal(signal.SIGSTOP)
            time.sleep(4.0)  # heartbeat_timeout is 2 s: B ends A's session and publishes
            dispatchers["a"].signal(signal.SIGCONT)
        else:
            dispatchers["a" if victim == "publisher" else "b"].kill()
        later = repo.burst(3)
        wait_for(lambda: all((results / "demo" / s / "amd64.json").exists() for s in burst + later),
                 timeout=90, what="every result")
        expected = ["amd64.json", "amd64.log", "index.html", "summary.json"]
        for sha in burst + later:
            folder = results / "demo" / sha
            record = json.loads((folder / "amd64.json").read_text())
            # A hung dispatcher's leases are adopted by the other, and may expire there
            # before their runners (still talking to the hung one) come back: a job may
            # then run again, and only its one result is written. A killed one may have
            # granted a lease as it died (a lease ahead, or the next job with a result),
            # its answer lost: that job runs once, on its second attempt, after the lease
            # expired at the survivor, which says so in its log.
            assert record["status"] == "passed", record
            survivor_log = dispatchers["a" if victim == "other" else "b"].log()
            assert (record["attempt"] == 1 or victim == "hung publisher"
                    or f"lease of demo {sha[:12]} amd64 expired" in survivor_log), record
            # One result each, whole: no temporary left (one in flight shows for a moment).
            wait_for(lambda f=folder: sorted(p.name for p in f.iterdir()) == expected,
                     timeout=10, what=f"exactly {expected} in {folder.name}")
        survivor = dispatchers["a" if victim == "other" else "b"]
        assert survivor.alive
        if victim != "other":
            assert "now publishes results" in survivor.log()
        if victim == "hung publisher":
            assert "stopped beating; ending its session" in survivor.log()
            assert dispatchers["a"].alive
    finally:
        a.close()
        b.close()


def test_a_state_that_is_neither_sqlite_nor_postgresql_is_bad_config(tmp_path: Path, repo: GitRepo) -> None:
    env = Polyarch(tmp_path, repo, state="mysql://ci@db/polyarch")
    done = env.cli("dispatcher", "serve", "--config", str(env.config))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "dispatcher.state" in line and "postgresql://" in line


def test_state_copy_moves_a_sqlite_state_over_and_refuses_a_non_empty_target(
        tmp_path: Path, repo: GitRepo, pg_cluster: Cluster) -> None:
    from dispatcher.common.config import load_config
    from dispatcher.common.states import Status
    from dispatcher.hub.server import policy_of, state_location
    from dispatcher.hub.store import JobResult, RunnerRow, Store
    from dispatcher.wire.protocol import CommitInfo

    env = Polyarch(tmp_path, repo)
    config = load_config(env.config)
    source = Store(state_location(config), policy_of(config))
    shas = [c * 40 for c in "abc"]
    source.jobs.enqueue("demo", "main", [CommitInfo(s, "Zoë", f"subject {s[0]}", 1, "") for s in shas], ["amd64"])
    runner = RunnerRow("r1", "amd64", "host", "x86_64", "0", False, "6.1", 0.0, 0.0)
    source.runners.register(runner)
    done = source.jobs.claim(runner)
    source.jobs.record_result(done.lease_id, JobResult(Status.FAILED, 1, 1.0, 2.0, b"log \xff"), "r1")
    leased = source.jobs.claim(runner)
    before = source.queries.jobs("demo", limit_commits=10)
    ids = {s: source.queries.commit_id("demo", s) for s in shas}
    source.close()

    url = pg_cluster.create_database("copied")
    copied = env.cli("dispatcher", "state", "copy", "--config", str(env.config), "--to", url)
    assert copied.returncode == 0, copied.stderr
    assert "copied 3 commit(s) and 3 job(s)" in copied.stdout
    target = Store(url, policy_of(config))
    try:
        assert target.queries.jobs("demo", limit_commits=10) == before
        assert {s: target.queries.commit_id("demo", s) for s in shas} == ids
        assert target.jobs.heartbeat(leased.lease_id)  # a lease held then is held on the copy
        # New rows continue after the copied ids.
        target.jobs.enqueue("demo", "main", [CommitInfo("d" * 40)], ["amd64"])
        assert target.queries.commit_id("demo", "d" * 40) > max(ids.values())
    finally:
        target.close()

    again = env.cli("dispatcher", "state", "copy", "--config", str(env.config), "--to", url)
    assert again.returncode == 2
    [line] = again.stderr.strip().splitlines()
    assert "already holds a polyarch state" in line


def _two_dispatchers(tmp_path: Path, repo: GitRepo, url: str, clients: dict[str, tuple[int, ...]],
                     ports: tuple[int, int], repo_settings: str = "") -> tuple[Polyarch, Polyarch, Path]:
    """Dispatchers A and B (listening on `ports`) on one database and one results folder,
    with one secret; `clients[name]`: the ports that env's observer and runners try, in order."""
    results = tmp_path / "results"
    envs = []
    for name, port in zip("ab", ports):
        (tmp_path / name).mkdir()
        secret = f'\ntoken_file = "{tmp_path / "a" / "var" / "secret"}"' if name == "b" else ""
        envs.append(Polyarch(tmp_path / name, repo, state=url, listen=f"127.0.0.1:{port}",
                             clients="[" + ", ".join(f'"127.0.0.1:{p}"' for p in clients[name]) + "]",
                             repo_settings=repo_settings, dispatcher_settings=f'results_dir = "{results}"' + secret))
    return envs[0], envs[1], results


def test_work_at_the_dispatcher_that_does_not_publish_reaches_the_pages_and_files(
        tmp_path: Path, repo: GitRepo, pg_cluster: Cluster) -> None:
    """A publishes; the observer and the runner use only B. What B's work makes stale (a
    job that started, a commit seen on another branch) reaches A, through the state's
    announcements: the dashboard shows the job running, the result its new branch."""
    ports = _free_port(), _free_port()
    a, b, results = _two_dispatchers(tmp_path, repo, pg_cluster.create_database("announce"),
                                     {"a": ports[1:], "b": ports[1:]}, ports, 'branches = ["main", "release/*"]')
    try:
        first = repo.commit("exit 0")
        publisher = a.dispatcher()  # started first: it publishes
        b.dispatcher()
        b.observer()
        b.runner("r1")
        wait_for(lambda: (results / "demo" / first / "amd64.json").exists(), what="the first result")
        assert "now publishes results" in publisher.log()
        gate = b.shared / "gate"
        held = repo.commit(f"while [ ! -e {gate} ]; do sleep 0.05; done")
        front = results / "index.html"
        wait_for(lambda: 'class="cell running"' in front.read_text(), what="A's front page to show B's job running")
        gate.touch()
        wait_for(lambda: (results / "demo" / held / "amd64.json").exists(), what="the held job's result")
        repo.git("branch", "release/1", held)
        record = results / "demo" / held / "amd64.json"
        wait_for(lambda: "release/1" in json.loads(record.read_text())["branches"],
                 what="the result to say the branch B's observer saw it on")
    finally:
        a.close()
        b.close()


def test_the_live_log_of_a_job_whose_runner_moved_goes_on_in_the_same_file(
        tmp_path: Path, repo: GitRepo, pg_cluster: Cluster) -> None:
    """The runner uses A, which is killed mid-job: the runner moves to B, and the job's
    live log (one file in the shared folder) goes on where A left it, nothing lost or
    said twice."""
    ports = _free_port(), _free_port()
    a, b, results = _two_dispatchers(tmp_path, repo, pg_cluster.create_database("moved_live"),
                                     {"a": ports, "b": ports}, ports)
    try:
        first = repo.commit("exit 0")
        dispatcher_a = a.dispatcher()
        b.dispatcher()
        a.observer()
        runner = a.runner("r1")
        wait_for(lambda: (results / "demo" / first / "amd64.json").exists(), what="the first result")
        gates = [a.shared / "gate1", a.shared / "gate2"]
        job = repo.commit(f"echo before the move; while [ ! -e {gates[0]} ]; do sleep 0.05; done; "
                          f"echo after the move; while [ ! -e {gates[1]} ]; do sleep 0.05; done")
        live = results / "demo" / job / "amd64.log.part"
        wait_for(lambda: live.exists() and "before the move" in live.read_text(), what="A to write the live log")
        dispatcher_a.kill()
        gates[0].touch()
        wait_for(lambda: f"now using 127.0.0.1:{ports[1]}" in runner.log(), what="the runner to move to B")
        wait_for(lambda: "after the move" in live.read_text(), what="B to go on with the live log")
        assert live.read_text() == "before the move\nafter the move\n"
        gates[1].touch()
        done = results / "demo" / job / "amd64.json"
        wait_for(done.exists, timeout=30, what="the result")
        record = json.loads(done.read_text())
        assert (record["status"], record["attempt"]) == ("passed", 1)
    finally:
        a.close()
        b.close()
