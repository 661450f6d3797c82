"""The codec: round trips, and every kind of malformed input refused with a clear error."""

from __future__ import annotations

import json
import struct

import pytest

from dispatcher.common.errors import MessageTooLarge, ProtocolError
from dispatcher.wire.protocol import (MAX_FRAME, PROTOCOL_VERSION, Ack, Auth, CommitInfo, Dispatch, Error,
                                      ErrorCode, Heartbeat, Job, Lease, NoJob, Result, Role, Reported, Submit)
from dispatcher.wire.frames import decode, encode

SHA = "a" * 40

SAMPLES = [
    Dispatch("demo", "main", [CommitInfo(SHA, "Dev", "subject ü", 1700000000)]),
    Submit("demo", SHA, "main", ["arm64"]),
    Auth(Role.RUNNER, "r1", "00" * 16, "ff" * 32),
    Job("lease", "demo", "/srv/git/demo", "main", SHA, "amd64", 2, "make check", 600.0),
    Result("lease", Reported.TIMEOUT, None, 1.5, 2.5, "out\x00put", True, "<testsuite/>", "timed out"),
    Error(ErrorCode.LEASE_LOST, "gone"),
    NoJob(), Ack(3, "ok"), Lease(5.0), Heartbeat("lease"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg) -> None:
    frame = encode(msg)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert decode(frame[4:]) == msg


def _body(**fields) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, **fields}).encode()


@pytest.mark.parametrize("body, message", [
    (b"\xff\xfe garbage", "not a JSON message"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"v": 99, "kind": "ack"}).encode(), "protocol version 99 unsupported"),
    (_body(kind="launch_missiles"), "unknown message kind 'launch_missiles'"),
    (_body(kind="heartbeat"), "missing field 'lease_id'"),
    (_body(kind="heartbeat", lease_id=7), "heartbeat.lease_id: expected str, got int"),
    (_body(kind="heartbeat", lease_id="x", extra=1), "unknown field 'extra'"),
    (_body(kind="lease", wait=True), "expected float, got bool"),
    (_body(kind="result", lease_id="x", status="great", exit_code=0, started_at=0, finished_at=0, log=""),
     "result.status: unknown value 'great'"),
    (_body(kind="dispatch", repo="demo", branch="main", commits=[{"sha": 5}]), "commits[0].sha: expected str"),
    (_body(kind="dispatch", repo="demo", branch="main", commits="nope"), "expected a list"),
])
def test_malformed_messages_are_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("(", r"\(")):
        decode(body)


def test_oversized_message_is_refused_before_sending() -> None:
    with pytest.raises(MessageTooLarge):
        encode(Result("l", Reported.PASSED, 0, 0, 0, "x" * (MAX_FRAME + 1)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_durations_and_times_must_be_finite_and_not_negative(value: float) -> None:
    body = json.dumps({"v": PROTOCOL_VERSION, "kind": "lease", "wait": value}).encode()
    with pytest.raises(ProtocolError, match="finite number >= 0"):
        decode(body)


def test_text_that_was_not_utf8_travels_as_replacement_characters() -> None:
    # GitPython decodes a non-UTF-8 author with surrogateescape: such text must not crash encode.
    author = b"Jos\xe9 \xff".decode("utf-8", "surrogateescape")
    frame = encode(Dispatch("demo", "main", [CommitInfo("a" * 40, author, "caf\udcc3 \ud800")]))
    [commit] = decode(frame[4:]).commits
    assert commit.author == "Jos\ufffd \ufffd" and "\ufffd" in commit.subject


def test_a_spooled_result_comes_back_typed_with_text_that_was_not_utf8(tmp_path) -> None:
    from runner.spool import Spool

    bad = b"src/caf\xe9.py".decode("utf-8", "surrogateescape")  # a file name in git's error output
    result = Result("l1", Reported.ERROR, None, 1.0, 2.0, f"cannot check out {bad}\n", reason=f"checkout: {bad}",
                    commit_info=CommitInfo(SHA, "Jos\udce9", "s", 1))
    spool = Spool(tmp_path)
    spool.put(result)
    [back] = spool.pending()
    assert back == result and isinstance(back.commit_info, CommitInfo)
    assert "\ufffd" in decode(encode(back)[4:]).reason  # and it still travels
