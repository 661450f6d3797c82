"""Error codes on the wire, and the one table from each code to its exception and to the
HTTP status the API answers with. The socket handler and the HTTP API both turn a typed
exception into a reply through `code_for`; the client turns a code back into RemoteError."""

from __future__ import annotations

import enum
from http import HTTPStatus

from dispatcher.common.errors import (AuthError, Busy, InternalError, InvalidName, LeaseLost, MessageTooLarge,
                                      NotAllowed, PolyarchError, ProtocolError, StateError, UnknownArch, UnknownName,
                                      UnknownRepo)


class ErrorCode(str, enum.Enum):
    BAD_MESSAGE = "bad-message"
    TOO_LARGE = "too-large"
    AUTH_FAILED = "auth-failed"
    UNKNOWN_REPO = "unknown-repo"
    UNKNOWN_ARCH = "unknown-arch"
    INVALID_NAME = "invalid-name"
    UNKNOWN = "unknown"  # a commit (or other thing) the dispatcher does not know
    LEASE_LOST = "lease-lost"
    NOT_ALLOWED = "not-allowed"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"  # the state database cannot be written (disk full): try later
    INTERNAL = "internal"

    @property
    def usage(self) -> bool:
        """The request named something wrong: exit code 2 at a CLI, retrying will not help."""
        return self in (ErrorCode.UNKNOWN_REPO, ErrorCode.UNKNOWN_ARCH, ErrorCode.INVALID_NAME, ErrorCode.UNKNOWN)


# code -> (the exception the hub raises for it, the HTTP API's status); subclasses before
# their bases, as `code_for` takes the first match.
TABLE: dict[ErrorCode, tuple[type[PolyarchError], HTTPStatus]] = {
    ErrorCode.TOO_LARGE: (MessageTooLarge, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    ErrorCode.BAD_MESSAGE: (ProtocolError, HTTPStatus.BAD_REQUEST),
    ErrorCode.AUTH_FAILED: (AuthError, HTTPStatus.UNAUTHORIZED),
    ErrorCode.UNKNOWN_REPO: (UnknownRepo, HTTPStatus.BAD_REQUEST),
    ErrorCode.UNKNOWN_ARCH: (UnknownArch, HTTPStatus.BAD_REQUEST),
    ErrorCode.INVALID_NAME: (InvalidName, HTTPStatus.BAD_REQUEST),
    ErrorCode.UNKNOWN: (UnknownName, HTTPStatus.NOT_FOUND),
    ErrorCode.LEASE_LOST: (LeaseLost, HTTPStatus.CONFLICT),
    ErrorCode.NOT_ALLOWED: (NotAllowed, HTTPStatus.FORBIDDEN),
    ErrorCode.BUSY: (Busy, HTTPStatus.SERVICE_UNAVAILABLE),
    ErrorCode.UNAVAILABLE: (StateError, HTTPStatus.SERVICE_UNAVAILABLE),
    ErrorCode.INTERNAL: (InternalError, HTTPStatus.INTERNAL_SERVER_ERROR),
}


def code_for(exc: BaseException) -> ErrorCode:
    """The wire code of a typed error; anything untyped is an internal error."""
    for code, (cls, _) in TABLE.items():
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def http_status(code: ErrorCode) -> HTTPStatus:
    return TABLE[code][1]
