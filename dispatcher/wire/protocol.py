"""The wire protocol: the typed messages (frames.py encodes, decodes and carries them).

Each message is a frozen dataclass with its KIND; on the wire it is one frame of JSON
`{"v": PROTOCOL_VERSION, "kind": ..., **fields}` (frames.py), at most MAX_FRAME bytes.

Conversation: the server speaks first (HELLO with a challenge), the client answers AUTH,
the server replies WELCOME (with its own proof) or ERROR and closes. After that the
client sends one request at a time and reads exactly one reply.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import typing
from typing import ClassVar, Optional, Union

from dispatcher.common.states import CellState, Overall, Reported
from dispatcher.wire.errors import ErrorCode

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


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
RUNNER_FEATURES = "features: next_job ahead"


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
    """Runner asks for a job; the server holds the request up to `wait` seconds.

    With `ahead`, the runner runs a job and asks for the one after it, to check it out
    meanwhile: answered at once, with a job only when the running one is short (hub.py's
    AHEAD_UNDER) and the runner holds no other lease ahead."""

    KIND: ClassVar[Kind] = Kind.LEASE
    wait: float
    ahead: bool = False


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
BY_KIND: dict[str, type] = {cls.KIND.value: cls for cls in typing.get_args(Message)}
