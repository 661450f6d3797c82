"""The wire protocol: typed messages, one encode, one decode, length-prefixed frames.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
`{"v": PROTOCOL_VERSION, "kind": ..., **fields}`. The length is checked against
MAX_FRAME before a single body byte is read, so an oversized message costs nothing.
Every read has a deadline for the whole frame, so a slow client cannot hold a thread
by trickling bytes.

Conversation: the server speaks first (HELLO with a challenge), the client answers AUTH,
the server replies WELCOME (with its own proof) or ERROR and closes. After that the
client sends one request at a time and reads exactly one reply.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import json
import math
import socket
import struct
import time
import typing
from typing import Any, ClassVar, Optional, Union

from dispatcher.common.errors import MessageTooLarge, ProtocolError
from dispatcher.common.states import CellState, Overall, Reported
from dispatcher.wire.errors import ErrorCode

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class Kind(str, enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    WELCOME = "welcome"
    ERROR = "error"
    DISPATCH = "dispatch"
    SUBMIT = "submit"
    ACK = "ack"
    REGISTER = "register"
    LEASE = "lease"
    JOB = "job"
    NO_JOB = "no_job"
    HEARTBEAT = "heartbeat"
    RESULT = "result"
    RELEASE = "release"
    QUERY = "query"
    COMMIT_STATUS = "commit_status"
    CANCEL = "cancel"
    RERUN = "rerun"
    LOG_READ = "log_read"
    LOG_TEXT = "log_text"
    STATUS_READ = "status_read"
    STATUS_REPORT = "status_report"


class Role(str, enum.Enum):
    OBSERVER = "observer"
    RUNNER = "runner"
    CLIENT = "client"


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str = ""
    subject: str = ""
    timestamp: int = 0
    parent: str = ""  # the first parent ("" for a root commit, or not known): what "broke" compares with


@dataclasses.dataclass(frozen=True)
class Hello:
    KIND: ClassVar[Kind] = Kind.HELLO
    nonce: str
    server: str


@dataclasses.dataclass(frozen=True)
class Auth:
    KIND: ClassVar[Kind] = Kind.AUTH
    role: Role
    name: str
    nonce: str
    mac: str


@dataclasses.dataclass(frozen=True)
class Welcome:
    KIND: ClassVar[Kind] = Kind.WELCOME
    proof: str
    heartbeat_interval: float


@dataclasses.dataclass(frozen=True)
class Error:
    KIND: ClassVar[Kind] = Kind.ERROR
    code: ErrorCode
    message: str


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """Observer -> dispatcher: new commits of one branch, oldest first."""

    KIND: ClassVar[Kind] = Kind.DISPATCH
    repo: str
    branch: str
    commits: list[CommitInfo]


@dataclasses.dataclass(frozen=True)
class Submit:
    """A manual run of one commit; archs empty = every configured architecture."""

    KIND: ClassVar[Kind] = Kind.SUBMIT
    repo: str
    commit: str
    branch: str = ""
    archs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Ack:
    KIND: ClassVar[Kind] = Kind.ACK
    created: int = 0
    message: str = ""
    job: Optional[Job] = None  # the answer to a Result with next_job: the runner's next lease, if one is queued


# The answer to a runner's Register names what this dispatcher takes beyond the first
# protocol (Ack.message, space-separated), so a newer runner talks down to an older one.
RUNNER_FEATURES = "features: next_job"


@dataclasses.dataclass(frozen=True)
class Register:
    KIND: ClassVar[Kind] = Kind.REGISTER
    arch: str
    version: str
    host: str
    machine: str
    emulated: bool = False
    kernel: str = ""
    qemu: str = ""  # the qemu-user version an emulated runner's jobs run under
    root: str = ""  # the root its jobs run in: "<arch> <suite> <digest of its packages>"; "" natively


@dataclasses.dataclass(frozen=True)
class Lease:
    """Runner asks for a job; the server holds the request up to `wait` seconds."""

    KIND: ClassVar[Kind] = Kind.LEASE
    wait: float


@dataclasses.dataclass(frozen=True)
class Job:
    KIND: ClassVar[Kind] = Kind.JOB
    lease_id: str
    repo: str
    url: str
    branch: str
    commit: str
    arch: str
    attempt: int
    test_command: str
    timeout: float  # seconds, native; the runner multiplies by timeout_factor
    timeout_factor: float = 1.0
    describe: bool = False  # the dispatcher knows no author or subject yet: send them back
    setup: str = ""  # the repository's setup command, run once per key and cached (empty: none)
    setup_key: list[str] = dataclasses.field(default_factory=list)  # globs of files whose contents key it


@dataclasses.dataclass(frozen=True)
class NoJob:
    KIND: ClassVar[Kind] = Kind.NO_JOB


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """The runner holds its lease; `output` is bytes output_start..output_end of the
    job's output stream (the live log), sent again until acknowledged."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT
    lease_id: str
    output: str = ""
    output_start: int = 0
    output_end: int = 0


@dataclasses.dataclass(frozen=True)
class Result:
    KIND: ClassVar[Kind] = Kind.RESULT
    lease_id: str
    status: Reported  # a runner cannot send flaky: the wire refuses it
    exit_code: Optional[int]
    started_at: float
    finished_at: float
    log: str  # the captured output, already capped by the runner
    log_truncated: bool = False
    junit: str = ""
    reason: str = ""
    commit_info: Optional[CommitInfo] = None  # when the job asked to `describe` its commit
    # The runner wants its next job in the answer (Ack.job), leased in the transaction that
    # records this result: one round trip between two jobs. None queued: no job, no wait.
    next_job: bool = False


@dataclasses.dataclass(frozen=True)
class Release:
    """Runner hands a leased job back (it is stopping); no attempt is spent."""

    KIND: ClassVar[Kind] = Kind.RELEASE
    lease_id: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Stop a commit's unfinished jobs (archs empty: all): queued ones end at once, a
    running one's runner learns it at its next heartbeat (its lease is gone)."""

    KIND: ClassVar[Kind] = Kind.CANCEL
    repo: str
    commit: str
    archs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Rerun:
    """Run a commit's final results again (archs empty: all; `failed`: those that did not
    pass): each becomes an earlier attempt, and a new one is queued."""

    KIND: ClassVar[Kind] = Kind.RERUN
    repo: str
    commit: str
    archs: list[str] = dataclasses.field(default_factory=list)
    failed: bool = False


class LogSource(str, enum.Enum):
    LIVE = "live"  # the running (or just finished) attempt's output as it arrives
    FINAL = "final"  # the final <arch>.log
    NONE = "none"  # nothing to read yet: queued, or running without output


@dataclasses.dataclass(frozen=True)
class LogRead:
    """A job's log from `offset` of `source` (None: the dispatcher picks: the final log
    once published, else the live one), waiting up to `wait` s for more."""

    KIND: ClassVar[Kind] = Kind.LOG_READ
    repo: str
    commit: str
    arch: str
    offset: int = 0
    wait: float = 0.0
    source: Optional[LogSource] = None
    attempt: int = 0  # the attempt being followed; 0: the current one


@dataclasses.dataclass(frozen=True)
class LogText:
    """The answer to LOG_READ: `text` starts at `offset` of `source`; `done` once the job
    is final and this source has nothing more (`state` and `reason` say how it ended)."""

    KIND: ClassVar[Kind] = Kind.LOG_TEXT
    repo: str
    commit: str
    arch: str
    attempt: int
    source: LogSource
    offset: int
    end: int  # the offset to ask for next
    text: str
    done: bool
    state: CellState
    reason: str = ""
    runner: str = ""


@dataclasses.dataclass(frozen=True)
class Query:
    """Where one commit stands (`polyarch-dispatcher wait`)."""

    KIND: ClassVar[Kind] = Kind.QUERY
    repo: str
    commit: str


@dataclasses.dataclass(frozen=True)
class ArchState:
    arch: str
    state: CellState
    runner: str = ""
    duration: float = 0.0
    attempt: int = 0
    emulated: bool = False
    tests_total: int = -1  # -1: no JUnit
    tests_failed: int = 0
    failed_tests: list[str] = dataclasses.field(default_factory=list)
    reason: str = ""
    published: bool = False  # final and its result files written


@dataclasses.dataclass(frozen=True)
class CommitStatus:
    """The answer to QUERY; `known` is False for a commit the dispatcher never saw."""

    KIND: ClassVar[Kind] = Kind.COMMIT_STATUS
    repo: str
    commit: str
    known: bool
    status: Overall = Overall.PENDING
    branch: str = ""
    subject: str = ""
    archs: list[ArchState] = dataclasses.field(default_factory=list)
    unattended: list[str] = dataclasses.field(default_factory=list)  # pending archs no runner serves
    author: str = ""
    timestamp: int = 0


@dataclasses.dataclass(frozen=True)
class ActiveJob:
    """A queued or running job, as `status` lists it."""

    repo: str
    commit: str
    arch: str
    state: CellState  # queued or running
    runner: str
    elapsed: float  # since queued, or since leased when running
    attempt: int


@dataclasses.dataclass(frozen=True)
class RunnerLine:
    """A runner the dispatcher has seen, as `status` lists it."""

    name: str
    arch: str
    host: str
    emulated: bool
    version: str
    last_seen: float
    connected: bool


@dataclasses.dataclass(frozen=True)
class StatusRead:
    """What `status` shows (repo and commit empty: every one; commit may be a prefix)."""

    KIND: ClassVar[Kind] = Kind.STATUS_READ
    repo: str = ""
    commit: str = ""
    limit: int = 20


@dataclasses.dataclass(frozen=True)
class StatusReport:
    KIND: ClassVar[Kind] = Kind.STATUS_REPORT
    generated_at: float
    commits: list[CommitStatus] = dataclasses.field(default_factory=list)
    active: list[ActiveJob] = dataclasses.field(default_factory=list)
    runners: list[RunnerLine] = dataclasses.field(default_factory=list)


Message = Union[Hello, Auth, Welcome, Error, Dispatch, Submit, Ack, Register, Lease, Job,
                NoJob, Heartbeat, Result, Release, Query, CommitStatus, Cancel, Rerun, LogRead, LogText, StatusRead,
                StatusReport]
_BY_KIND: dict[str, type] = {cls.KIND.value: cls for cls in typing.get_args(Message)}


def encode(msg: Message) -> bytes:
    """Message -> one frame (header + JSON body)."""
    body = {"v": PROTOCOL_VERSION, "kind": msg.KIND.value}
    body.update(_wire(msg))
    # Text that came from bytes that were not UTF-8 (an author, a file name in git's
    # output, a test's log) may hold lone surrogates: they travel as U+FFFD, never crash.
    data = utf8(json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
    if len(data) > MAX_FRAME:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(data)) + data


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
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
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
        header = self._read(_HEADER.size, deadline, allow_eof=True)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
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
