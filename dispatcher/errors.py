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

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "repo" or "arch"
        super().__init__(message)


class ProtocolError(PolyarchError):
    """A message that cannot be framed, decoded or accepted in this state."""


class MessageTooLarge(ProtocolError):
    """A frame announced a size above the hard limit."""


class AuthError(PolyarchError):
    """The peer failed the challenge (wrong secret) or the secret file is unsafe."""


class StateError(PolyarchError):
    """The state database or a cursor file is unreadable; never silently reset."""


class RemoteError(PolyarchError):
    """The dispatcher answered with an error message."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")
