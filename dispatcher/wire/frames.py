"""Frames on the wire: one encode, one decode, and the Channel that reads and writes them.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
`{"v": PROTOCOL_VERSION, "kind": ..., **fields}` (the messages are protocol.py's). The
length is checked against MAX_FRAME before a single body byte is read, so an oversized
message costs nothing. Every read has a deadline for the whole frame, so a slow client
cannot hold a thread by trickling bytes.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import json
import math
import socket
import time
import typing
from typing import Any, Union

from dispatcher.common.errors import MessageTooLarge, ProtocolError
from dispatcher.wire.protocol import BY_KIND, HEADER, MAX_FRAME, PROTOCOL_VERSION, Message


def encode(msg: Message) -> bytes:
    """Message -> one frame (header + JSON body)."""
    body = {"v": PROTOCOL_VERSION, "kind": msg.KIND.value}
    body.update(_wire(msg))
    # Text that came from bytes that were not UTF-8 (an author, a file name in git's
    # output, a test's log) may hold lone surrogates: they travel as U+FFFD, never crash.
    data = utf8(json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    if len(data) > MAX_FRAME:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(data)) + data


def _wire(value: Any) -> Any:
    """A message as JSON values; a field still at its default is left out (the other side
    fills it in), so a field added later reaches an older peer, whose decoder refuses
    names it does not know, only when it says something."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.default is not dataclasses.MISSING and item == field.default:
                continue
            if field.default_factory is not dataclasses.MISSING and item == field.default_factory():
                continue
            out[field.name] = _wire(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _as_bad_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Each lone surrogate back to the byte it escaped (any other: an invalid byte)."""
    assert isinstance(exc, UnicodeEncodeError)  # noqa: S101 - registered for encoding only
    chunk = exc.object[exc.start:exc.end]
    return bytes(ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else 0xFF for c in chunk), exc.end


codecs.register_error("polyarch-bad-bytes", _as_bad_bytes)


def utf8(text: str) -> bytes:
    """UTF-8 of any str: lone surrogates (bytes that were not UTF-8, decoded with
    surrogateescape as GitPython does) become U+FFFD, one per bad byte, never an error."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "polyarch-bad-bytes").decode("utf-8", "replace").encode("utf-8")


def decode(body: bytes) -> Message:
    """Frame body -> typed message; anything malformed raises ProtocolError."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON message: {exc}") from None
    except RecursionError:
        raise ProtocolError("not a JSON message: nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    version = data.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} unsupported (this side speaks {PROTOCOL_VERSION})")
    kind = data.pop("kind", None)
    cls = BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return _build(cls, data, kind)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected an object")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            kwargs[field.name] = _convert(hints[field.name], data.pop(field.name), f"{where}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {field.name!r}")
    if data:
        raise ProtocolError(f"{where}: unknown field {sorted(data)[0]!r}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        (item,) = typing.get_args(hint)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ProtocolError(f"{where}: unknown value {value!r}") from None
    if hint is float:
        # Every float on the wire is a duration or a time: finite and not negative.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ProtocolError(f"{where}: expected a finite number >= 0, got {value!r}")
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ProtocolError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")


class Channel:
    """One socket speaking frames; both the server handler and the clients use it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, msg: Message) -> None:
        self.sock.sendall(encode(msg))

    def recv(self, timeout: float | None) -> Message | None:
        """Next message, or None when the peer closed cleanly between messages.

        Raises TimeoutError if the whole frame did not arrive within `timeout` seconds,
        MessageTooLarge before reading an oversized body, ProtocolError on garbage.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        header = self._read(HEADER.size, deadline, allow_eof=True)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise MessageTooLarge(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        body = self._read(size, deadline, allow_eof=False)
        assert body is not None  # noqa: S101 - narrowing: allow_eof=False never returns None
        return decode(body)

    def _read(self, n: int, deadline: float | None, allow_eof: bool) -> bytes | None:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("peer too slow: frame not complete before the deadline")
                self.sock.settimeout(remaining)
            else:
                self.sock.settimeout(None)
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                if allow_eof and got == 0:
                    return None
                raise ProtocolError("connection closed in the middle of a message")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
