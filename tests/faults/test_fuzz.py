"""Hypothesis against the decoder and, through a live socket, against the handlers.

Counts of inputs tried are recorded for docs/RELIABILITY.md. A crash is any exception
other than the typed refusal (ProtocolError) from the decoder, or an "internal error"
logged by the server, or the server failing to serve a well-behaved client afterwards.
"""

from __future__ import annotations

import json
import logging
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Polyarch, dispatcher_in_thread
from dispatcher.wire.auth import client_mac
from dispatcher.wire.client import Connection
from dispatcher.common.errors import ProtocolError
from dispatcher.wire.protocol import (MAX_FRAME, PROTOCOL_VERSION, Ack, Auth, Dispatch, Error, Hello, Kind,
                                      Message, Role)
from dispatcher.wire.frames import Channel, decode, encode
from faults.conftest import record, scale

FIELDS = ["role", "name", "nonce", "mac", "server", "proof", "heartbeat_interval", "code", "message", "repo",
          "branch", "commits", "sha", "author", "subject", "timestamp", "commit", "archs", "created", "arch",
          "version", "host", "machine", "emulated", "kernel", "wait", "lease_id", "url", "attempt",
          "test_command", "timeout", "timeout_factor", "status", "exit_code", "started_at", "finished_at", "log",
          "log_truncated", "junit", "reason"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=50)
    | st.sampled_from(["amd64", "arm64", "main", "demo", "c" * 40, "runner", "passed", "../../etc", "a\nb"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)

message_dicts = st.fixed_dictionaries(
    {"v": st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, "1", None]),
     "kind": st.sampled_from([k.value for k in Kind]) | st.text(max_size=10)},
    optional={f: json_values for f in FIELDS})

frame_bodies = st.one_of(
    message_dicts.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.text(max_size=100).map(str.encode),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
)

COUNTS = {"decoder": 0, "socket": 0}


@settings(max_examples=scale(500, 10_000), deadline=None)
@given(body=frame_bodies)
def test_decoder_refuses_garbage_only_with_protocol_error(body: bytes) -> None:
    COUNTS["decoder"] += 1
    try:
        msg = decode(body)
    except ProtocolError:
        return
    # What it accepts is a well-typed message that encodes back to an equal one.
    assert decode(encode(msg)[4:]) == msg


def test_record_decoder_inputs() -> None:
    record("hostile", "decoder: random bytes, random JSON, wrong types, unknown kinds, deep nesting",
           inputs=COUNTS["decoder"], crashes=0)


class _InternalErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, rec: logging.LogRecord) -> None:
        if "internal error" in rec.getMessage():
            self.records.append(self.format(rec))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from conftest import GitRepo

    root = tmp_path_factory.mktemp("fuzz")
    env = Polyarch(root, GitRepo(root / "upstream"))
    handler = _InternalErrors()
    logging.getLogger("polyarch").addHandler(handler)
    with dispatcher_in_thread(env.config) as server:
        yield server, handler
    logging.getLogger("polyarch").removeHandler(handler)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _session(server, authenticate: bool, role: Role) -> socket.socket:
    sock = socket.create_connection((server.address.host, server.address.port), timeout=5)
    if authenticate:
        channel = Channel(sock)
        hello = channel.recv(5)
        assert isinstance(hello, Hello)
        mac = client_mac(server.secret, hello.nonce, "n" * 32, role.value, "fuzzer")
        channel.send(Auth(role=role, name="fuzzer", nonce="n" * 32, mac=mac))
        assert not isinstance(channel.recv(5), Error)
    return sock


def _drain(sock: socket.socket) -> None:
    sock.settimeout(0.3)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


frames = st.lists(st.one_of(
    frame_bodies.map(_frame),
    frame_bodies.map(lambda b: _frame(b)[: max(1, len(b) // 2)]),  # truncated
    st.just(struct.pack(">I", MAX_FRAME + 1)),  # oversized
    st.binary(min_size=1, max_size=64),  # not even a frame
), min_size=1, max_size=4)


@settings(max_examples=scale(150, 2_000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=frames, authenticate=st.booleans(), role=st.sampled_from(list(Role)))
def test_live_socket_survives_garbage_and_serves_everyone_else(live, payload: list[bytes], authenticate: bool,
                                                              role: Role) -> None:
    server, internal = live
    COUNTS["socket"] += 1
    with _session(server, authenticate, role) as sock:
        try:
            for chunk in payload:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close on the first bad frame: that is its right
        _drain(sock)
    assert not internal.records, internal.records[0]
    with Connection(server.address, Role.OBSERVER, "witness", server.secret) as conn:
        assert isinstance(conn.request(Dispatch("demo", "main", [])), Ack)


def test_record_socket_inputs(live) -> None:
    _, internal = live
    record("hostile", "live socket: garbage, truncated, oversized, out-of-order frames, before and after auth",
           inputs=COUNTS["socket"], crashes=len(internal.records))


def test_replayed_authentication_is_refused(live) -> None:
    server, _ = live
    sock = socket.create_connection((server.address.host, server.address.port), timeout=5)
    channel = Channel(sock)
    hello = channel.recv(5)
    assert isinstance(hello, Hello)
    auth = Auth(role=Role.RUNNER, name="r1", nonce="a" * 32,
                mac=client_mac(server.secret, hello.nonce, "a" * 32, "runner", "r1"))
    channel.send(auth)
    assert not isinstance(channel.recv(5), Error)
    sock.close()
    # An eavesdropper replays the same AUTH on a new connection: the server's nonce differs.
    sock = socket.create_connection((server.address.host, server.address.port), timeout=5)
    channel = Channel(sock)
    assert isinstance(channel.recv(5), Hello)
    channel.send(auth)
    reply: Message | None = channel.recv(5)
    assert isinstance(reply, Error) and reply.code.value == "auth-failed"
    sock.close()
