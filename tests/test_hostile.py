"""Hostile and wrong input over a live socket: refused clearly, the server serves on."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from conftest import Polyarch, dispatcher_in_thread, wait_for
from dispatcher.wire.auth import load_secret
from dispatcher.wire.client import Connection
from dispatcher.common.errors import AuthError, RemoteError
from dispatcher.wire.protocol import (MAX_FRAME, Ack, CommitInfo, Dispatch, Heartbeat, Job, Lease, Register, Result,
                                 Role, Reported, Submit)

SHA = "c" * 40


@pytest.fixture
def server(polyarch: Polyarch):
    with dispatcher_in_thread(polyarch.config) as srv:
        yield srv


def connect(server, role: Role = Role.OBSERVER, name: str = "t", secret: bytes | None = None) -> Connection:
    return Connection(server.address, role, name, secret if secret is not None else server.secret)


def assert_still_serving(server) -> None:
    with connect(server) as conn:
        reply = conn.request(Dispatch("demo", "main", []))
        assert isinstance(reply, Ack)


def dial(server) -> socket.socket:
    return socket.create_connection((server.address.host, server.address.port), timeout=5)


def read_error(sock: socket.socket) -> dict:
    chunks = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        chunks += data
    # Skip the hello frame, return the last frame (the error).
    frames = []
    buf = chunks
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        frames.append(json.loads(buf[4:4 + n]))
        buf = buf[4 + n:]
    return frames[-1]


def test_garbage_on_the_socket_gets_an_error_and_the_server_serves_on(server) -> None:
    with dial(server) as sock:
        sock.sendall(struct.pack(">I", 11) + b"hello world")
        error = read_error(sock)
    assert error["kind"] == "error" and error["code"] == "bad-message"
    assert_still_serving(server)


def test_oversized_frame_is_refused_without_reading_it(server) -> None:
    with dial(server) as sock:
        sock.sendall(struct.pack(">I", MAX_FRAME + 1))
        error = read_error(sock)
    assert error["code"] == "too-large"
    assert_still_serving(server)


def test_wrong_secret_is_refused(server) -> None:
    with pytest.raises(AuthError, match="refused our secret"):
        connect(server, secret=b"not-the-secret-at-all")
    assert_still_serving(server)


def test_a_silent_client_is_closed_after_the_auth_deadline(server, monkeypatch) -> None:
    monkeypatch.setattr("dispatcher.hub.server.AUTH_TIMEOUT", 0.3)
    started = time.monotonic()
    with dial(server) as sock:
        while sock.recv(65536):
            pass
    assert time.monotonic() - started < 3
    assert_still_serving(server)


@pytest.mark.parametrize("msg, code", [
    (Dispatch("nope", "main", [CommitInfo(SHA)]), "unknown-repo"),
    (Dispatch("demo", "main;reboot", [CommitInfo(SHA)]), "invalid-name"),
    (Dispatch("demo", "main", [CommitInfo("../../etc/passwd")]), "invalid-name"),
    (Submit("demo", SHA, archs=["riscv64"]), "unknown-arch"),
    (Submit("demo", SHA, archs=["vax"]), "invalid-name"),
    (Lease(1.0), "not-allowed"),
])
def test_bad_requests_get_an_error_and_the_connection_stays_usable(server, msg, code: str) -> None:
    with connect(server) as conn:
        with pytest.raises(RemoteError) as err:
            conn.request(msg)
        assert err.value.code == code
        assert isinstance(conn.request(Dispatch("demo", "main", [])), Ack)
    # Refused, it changed nothing: no commit and no job entered the state.
    assert server.hub.store.queries.jobs() == [] and server.hub.store.queries.commit_count("demo") == 0


def test_late_result_after_lease_expiry_is_acknowledged_and_dropped(server) -> None:
    with connect(server) as obs:
        assert obs.request(Dispatch("demo", "main", [CommitInfo(SHA)])).created == 1
    slow = connect(server, Role.RUNNER, "slow")
    slow.request(Register("amd64", "0", "h", "x86_64"))
    job = slow.request(Lease(1.0))
    assert isinstance(job, Job)
    # No heartbeat: the lease expires (heartbeat_timeout = 2 s) and the job goes back.
    fast = connect(server, Role.RUNNER, "fast")
    fast.request(Register("amd64", "0", "h", "x86_64"))
    again = fast.request(Lease(10.0))
    assert isinstance(again, Job) and again.attempt == 2
    with pytest.raises(RemoteError, match="lease-lost"):
        slow.request(Heartbeat(job.lease_id))
    assert fast.request(Result(again.lease_id, Reported.PASSED, 0, 1, 2, "fast log")).created == 1
    late = slow.request(Result(job.lease_id, Reported.FAILED, 1, 1, 2, "slow log"))
    assert late.created == 0 and "discarded" in late.message
    again_dup = fast.request(Result(again.lease_id, Reported.FAILED, 1, 1, 2, "dup"))
    assert again_dup.created == 0
    path = Path(server.config.dispatcher.results_dir) / "demo" / SHA / "amd64.json"
    wait_for(path.exists, what="the publisher to write the files")  # acked = durable; files follow
    result = json.loads(path.read_text())
    assert result["status"] == "passed" and result["runner"] == "fast" and result["attempt"] == 2
    assert (Path(server.config.dispatcher.results_dir) / "demo" / SHA / "amd64.log").read_text() == "fast log"
    slow.close()
    fast.close()


def test_long_poll_hands_a_new_job_over_within_milliseconds(server) -> None:
    runner = connect(server, Role.RUNNER, "waiting")
    runner.request(Register("amd64", "0", "h", "x86_64"))
    got: list = []
    thread = threading.Thread(target=lambda: got.append((runner.request(Lease(20.0)), time.monotonic())))
    thread.start()
    time.sleep(0.3)  # let the lease request park on the server
    with connect(server) as obs:
        sent = time.monotonic()
        obs.request(Dispatch("demo", "main", [CommitInfo(SHA)]))
    thread.join(timeout=5)
    job, received = got[0]
    assert isinstance(job, Job)
    # Generous bound for a loaded CI machine; a polling tick would show as >= 1 s.
    assert received - sent < 0.5
    runner.close()


def test_strangers_are_cut_oldest_first_and_runners_are_never_crowded_out(server) -> None:
    server.admission.max_connections = 3
    server.admission.max_unauthenticated = 2
    with connect(server) as member:  # authenticated: holds its slot
        silent = [dial(server) for _ in range(2)]
        wait_for(lambda: server.admission.unauthenticated == 2, what="two strangers to be counted")
        with dial(server) as newcomer:
            assert silent[0].recv(65536)  # its hello, sent before the cut
            silent[0].settimeout(5)
            assert silent[0].recv(65536) == b""  # then cut: the oldest stranger made room
            assert newcomer.recv(4)  # the newcomer got its hello
        assert isinstance(member.request(Dispatch("demo", "main", [])), Ack)
    for sock in silent:
        sock.close()
    wait_for(lambda: server.admission.open_connections == 0, what="connections to be released")
    assert server.admission.evicted >= 1


def test_connections_beyond_the_limit_are_refused_when_all_are_authenticated(server) -> None:
    server.admission.max_connections = 2
    held = [connect(server, name=f"m{i}") for i in range(2)]
    with dial(server) as extra:
        assert extra.recv(10) == b""  # closed at once, no hello
    assert server.admission.refused == 1
    for conn in held:
        conn.close()
    wait_for(lambda: server.admission.open_connections == 0, what="connections to be released")
    assert_still_serving(server)


def test_world_readable_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("x" * 64)
    path.chmod(0o644)
    with pytest.raises(AuthError, match="readable by others"):
        load_secret(path)
    created = load_secret(tmp_path / "new" / "secret", create=True)
    assert len(created) == 64 and (tmp_path / "new" / "secret").stat().st_mode & 0o777 == 0o600


def test_a_runner_with_its_own_secret_is_bound_to_its_name_and_architectures(polyarch: Polyarch) -> None:
    """[dispatcher.runners] lists the runners allowed: each proves its own secret, and
    serves only its architectures; a leaked shared secret (or another runner's) poses as
    nobody on that list, and the real runner still gets its work."""
    polyarch.write_config(dispatcher_settings='[dispatcher.runners.r1]\ntoken_file = "var/r1.secret"\n'
                                              'architectures = ["amd64"]\n[dispatcher.runners.r9]\n'
                                              'token_file = "var/r9.secret"\narchitectures = ["s390x"]\n')
    with dispatcher_in_thread(polyarch.config) as srv:
        own = load_secret(polyarch.root / "var/r1.secret")  # made on the dispatcher's first start
        assert own != srv.secret
        with pytest.raises(AuthError, match="refused our secret"):
            connect(srv, Role.RUNNER, "r1")  # the shared secret is not r1's
        with pytest.raises(AuthError, match="refused our secret"):
            connect(srv, Role.RUNNER, "intruder")  # not on the list, whatever the secret
        with pytest.raises(AuthError, match="refused our secret"):
            connect(srv, Role.RUNNER, "r9", own)  # r1's secret is not r9's
        r9 = load_secret(polyarch.root / "var/r9.secret")
        with connect(srv, Role.RUNNER, "r9", r9) as conn:
            with pytest.raises(RemoteError, match=r"runner r9 may serve only s390x \(\[dispatcher.runners.r9\] "
                                                  r"architectures\), not amd64"):
                conn.request(Register(arch="amd64", version="0", host="h", machine="x86_64", emulated=False,
                                      kernel="k"))
        with connect(srv, Role.RUNNER, "r1", own) as conn:
            assert isinstance(conn.request(Register(arch="amd64", version="0", host="h", machine="x86_64",
                                                    emulated=False, kernel="k")), Ack)
        assert_still_serving(srv)  # observers and clients keep the shared secret
    # A real runner with runner.token_file pointing at its own secret gets its jobs.
    text = polyarch.config.read_text().replace("[runner]\n", '[runner]\ntoken_file = "var/r1.secret"\n', 1)
    polyarch.config.write_text(text)
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    assert polyarch.wait_results([sha])[sha]["status"] == "passed"
