"""Clients with a list of dispatchers (`dispatcher = [...]` in [observer] and [runner]):
when the one they use is killed, they move to the next, and what they held (the
observer's unacknowledged commits, a runner's spooled result) goes to whichever answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import GitRepo, Polyarch, wait_for

pytestmark = pytest.mark.daemons


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_observer_and_runner_move_to_the_next_dispatcher_when_theirs_is_killed(tmp_path: Path,
                                                                                 repo: GitRepo) -> None:
    ports = _free_port(), _free_port()
    clients = "[" + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Two dispatchers, each with its own state and results; one secret for all.
    a = Polyarch(tmp_path / "a", repo, listen=f"127.0.0.1:{ports[0]}", clients=clients)
    b = Polyarch(tmp_path / "b", repo, listen=f"127.0.0.1:{ports[1]}", clients=clients,
                 dispatcher_settings=f'token_file = "{tmp_path / "a" / "var" / "secret"}"')
    try:
        first = repo.commit("exit 0")
        first_dispatcher = a.dispatcher()
        b.dispatcher()
        observer, runner = a.observer(), a.runner("r1")
        assert a.wait_results([first])[first]["status"] == "passed"

        first_dispatcher.kill()
        later = repo.burst(3, lambda i: "exit 1" if i == 1 else "exit 0")
        results = b.wait_results(later, timeout=60)
        assert [results[s]["status"] for s in later] == ["passed", "failed", "passed"]
        assert all(r["attempt"] == 1 for r in results.values())
        moved = f"now using 127.0.0.1:{ports[1]}"
        wait_for(lambda: moved in runner.log() and moved in observer.log(), what="both clients to say they moved")
        assert not (a.results / "demo" / later[0]).exists()  # nothing reached the dead one
    finally:
        a.close()
        b.close()


def test_a_list_of_dispatchers_that_is_empty_or_not_addresses_is_bad_config(tmp_path: Path, repo: GitRepo) -> None:
    for value, fault in (("[]", "names no dispatcher"), ("[7341]", "host:port")):
        env = Polyarch(tmp_path, repo, clients=value)
        done = env.cli("runner", "serve", "--config", str(env.config))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert ".dispatcher: " in line and fault in line, line  # the first section that has it
