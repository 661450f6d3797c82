"""Architectures and the strict patterns every name must match where it enters.

Names end up in file paths under test_results/ and in git command lines, so they are
checked once, at the edge, against patterns that cannot escape a folder or reach a shell.
"""

from __future__ import annotations

import enum
import platform
import re

from dispatcher.common.errors import InvalidName


class Arch(str, enum.Enum):
    """Debian architecture names, the only spelling used inside polyarch."""

    AMD64 = "amd64"
    ARM64 = "arm64"
    ARMHF = "armhf"
    RISCV64 = "riscv64"
    PPC64EL = "ppc64el"
    S390X = "s390x"
    I386 = "i386"

    def __str__(self) -> str:
        return self.value


# `uname -m` / platform.machine() spellings and common aliases -> Debian names.
_MACHINE_ALIASES = {
    "x86_64": Arch.AMD64,
    "amd64": Arch.AMD64,
    "x64": Arch.AMD64,
    "aarch64": Arch.ARM64,
    "arm64": Arch.ARM64,
    "armv7l": Arch.ARMHF,
    "armv7": Arch.ARMHF,
    "armv8l": Arch.ARMHF,
    "armhf": Arch.ARMHF,
    "riscv64": Arch.RISCV64,
    "ppc64le": Arch.PPC64EL,
    "ppc64el": Arch.PPC64EL,
    "s390x": Arch.S390X,
    "i386": Arch.I386,
    "i486": Arch.I386,
    "i586": Arch.I386,
    "i686": Arch.I386,
    "x86": Arch.I386,
}


def parse_arch(text: str) -> Arch:
    """Debian name or `uname -m` spelling -> Arch; anything else is an InvalidName."""
    arch = _MACHINE_ALIASES.get(str(text).strip().lower())
    if arch is None:
        known = ", ".join(a.value for a in Arch)
        raise InvalidName(f"unknown architecture {text!r} (known: {known})")
    return arch


def host_arch() -> Arch:
    """This process's own architecture, as the kernel (or qemu-user) reports it."""
    return parse_arch(platform.machine())


_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COMMIT_RE = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})")
_RUNNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}")


def check_repo(name: str) -> str:
    if not isinstance(name, str) or not _REPO_RE.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid repo name {name!r} (letters, digits, '.', '_', '-')")
    return name


# Beyond letters and digits (any script's), what a branch name may hold: what git allows
# except shell syntax. Names travel to hooks, logs and pages; `$`, quotes, `;`, `|`, `&`,
# `<`, `>`, `(`, `)`, `!`, `{`, `}`, backslash and spaces never reach any of them.
_BRANCH_PUNCT = frozenset("._/+-#%=,@")
_BRANCH_MAX = 200


def _branch_problem(name: object, wildcards: str) -> str:
    """Why `name` is not a branch name polyarch takes ("" when it is): git's rules
    (check-ref-format) without shell text; `wildcards` are allowed too (in patterns)."""
    if not isinstance(name, str) or not name:
        return "empty"
    if len(name) > _BRANCH_MAX:
        return f"longer than {_BRANCH_MAX} characters"
    for ch in name:
        if not (ch.isalnum() or ch in _BRANCH_PUNCT or ch in wildcards) or ch.isspace() or not ch.isprintable():
            return f"{ch!r} is not allowed (shell syntax, a space, or refused by git)"
    if name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        return "it may not start with '-' or '/', nor end with '/', '.' or '.lock'"
    if ".." in name or "//" in name or "@{" in name or name == "@":
        return "'..', '//', '@{' and a lone '@' are refused by git"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "no part may start with '.' or end with '.lock'"
    return ""


def check_branch(name: str) -> str:
    """A branch as polyarch records it: a branch's name (`fix#12-arm`) or a full ref
    outside refs/heads (`refs/pull/12/head`)."""
    problem = _branch_problem(name, "")
    if problem:
        raise InvalidName(f"invalid branch name {name!r}: {problem}")
    return name


def check_branch_pattern(pattern: str) -> str:
    """An entry of a repository's `branches`: a branch name, or a pattern with `*` and `?`."""
    problem = _branch_problem(pattern, "*?")
    if problem:
        raise InvalidName(f"invalid branch pattern {pattern!r}: {problem}")
    return pattern


def check_commit(sha: str) -> str:
    if not isinstance(sha, str) or not _COMMIT_RE.fullmatch(sha):
        raise InvalidName(f"invalid commit {sha!r} (40 or 64 lowercase hex digits)")
    return sha


def is_commit(text: object) -> bool:
    return isinstance(text, str) and _COMMIT_RE.fullmatch(text) is not None


def check_commit_prefix(text: str) -> str:
    """A commit id or the start of one (what `status --commit` takes)."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{1,64}", text):
        raise InvalidName(f"invalid commit {text!r}: expected hex digits (a prefix is enough)")
    return text


def check_runner(name: str) -> str:
    if not isinstance(name, str) or not _RUNNER_RE.fullmatch(name):
        raise InvalidName(f"invalid runner name {name!r}")
    return name
