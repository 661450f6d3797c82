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
_BRANCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")
_COMMIT_RE = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})")
_RUNNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}")


def check_repo(name: str) -> str:
    if not isinstance(name, str) or not _REPO_RE.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid repo name {name!r} (letters, digits, '.', '_', '-')")
    return name


def check_branch(name: str) -> str:
    # Stricter than git's own check-ref-format: no shell metacharacters at all, and
    # nothing that git itself would refuse ("..", "//", a trailing "/" or ".lock").
    ok = (
        isinstance(name, str)
        and _BRANCH_RE.fullmatch(name) is not None
        and ".." not in name
        and "//" not in name
        and not name.endswith(("/", ".lock", "."))
    )
    if not ok:
        raise InvalidName(f"invalid branch name {name!r}")
    return name


def check_commit(sha: str) -> str:
    if not isinstance(sha, str) or not _COMMIT_RE.fullmatch(sha):
        raise InvalidName(f"invalid commit {sha!r} (40 or 64 lowercase hex digits)")
    return sha


def check_commit_prefix(text: str) -> str:
    """A commit id or the start of one (what `status --commit` takes)."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{1,64}", text):
        raise InvalidName(f"invalid commit {text!r}: expected hex digits (a prefix is enough)")
    return text


def check_runner(name: str) -> str:
    if not isinstance(name, str) or not _RUNNER_RE.fullmatch(name):
        raise InvalidName(f"invalid runner name {name!r}")
    return name
