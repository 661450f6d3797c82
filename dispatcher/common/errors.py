"""Typed errors shared by the three daemons.

Library code raises these; only the CLI edge turns them into a one-line message and an
exit code, so every failure names its culprit in one place.
"""

from __future__ import annotations


class PolyarchError(Exception):
    """Base of every error polyarch raises on purpose."""


class ConfigError(PolyarchError):
    """A config file (or a repository's .polyarch.toml) is unusable."""

    def __init__(self, path: object, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


class SetupError(PolyarchError):
    """A piece of the machine's setup is missing (qemu, binfmt, a root file system).

    Exit code 2, like bad config: restarting will not help until someone runs the
    command the message names."""


class InvalidName(PolyarchError):
    """A repo, branch, arch or commit name that does not match its strict pattern."""


class UnknownName(PolyarchError):
    """A well-formed repo or arch name that the config does not list."""


class UnknownRepo(UnknownName):
    pass


class UnknownArch(UnknownName):
    pass


class Refused(PolyarchError):
    """A well-formed request the hub's rules turn down; the connection goes on."""


class NotAllowed(Refused):
    """A request this peer's role (or state: not registered yet) may not make."""


class LeaseLost(Refused):
    """A heartbeat for a lease that is no longer the runner's (expired or finished)."""


class Busy(Refused):
    """Too many connections: try again later."""


class InternalError(PolyarchError):
    """A bug: the peer is told to look at the dispatcher's log."""


class ProtocolError(PolyarchError):
    """A message that cannot be framed, decoded or accepted in this state."""


class MessageTooLarge(ProtocolError):
    """A frame announced a size above the hard limit."""


class AuthError(PolyarchError):
    """The peer failed the challenge (wrong secret) or the secret file is unsafe."""


class StateError(PolyarchError):
    """The state database or a cursor file is unreadable; never silently reset."""


class StateUnavailable(StateError):
    """The state's PostgreSQL server cannot be reached now: waiting (or a restart of the
    dispatcher) may fix it, unlike an unreadable state."""


class RemoteError(PolyarchError):
    """The dispatcher answered with an error message; `code` is its wire ErrorCode."""

    def __init__(self, code: str, message: str, usage: bool = False) -> None:
        self.code = code
        self.usage = usage  # the request named something wrong: retrying will not help
        super().__init__(f"{getattr(code, 'value', code)}: {message}")
