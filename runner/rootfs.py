"""Debian root file systems of other architectures, for emulated jobs.

`build` makes one with mmdebstrap from the machine's apt sources. It holds nothing of
polyarch: the runner stays on the host and runs only the job's commands inside the root
(runner/jail.py), so a root is an ordinary Debian system of its architecture, with
Python and git for the suites that need them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher.common.errors import SetupError
from dispatcher.common.files import atomic_write
from dispatcher.common.names import Arch
from dispatcher.common.progress import Sink
from dispatcher.common.progress import run as progress_run

from . import binfmt

log = logging.getLogger("polyarch.runner")

MARKER = Path("etc/polyarch-rootfs.json")
PACKAGES = ("python3", "git", "ca-certificates")
SUITE = "bookworm"
# Debian releases an architecture first appeared in, where the default one lacks it.
SUITE_FOR = {Arch.RISCV64: "trixie"}


def default_suite(arch: Arch) -> str:
    return SUITE_FOR.get(arch, SUITE)


class RootfsError(SetupError):
    """The root file system is missing, incomplete or cannot be built."""


@dataclasses.dataclass(frozen=True)
class RootInfo:
    arch: Arch
    suite: str
    built_at: float


def read_info(root: Path) -> RootInfo:
    path = root / MARKER
    try:
        data = json.loads(path.read_text())
        # Roots built before the runner left them held a copy of polyarch; its keys are ignored.
        return RootInfo(Arch(data["arch"]), str(data.get("suite", SUITE)), float(data["built_at"]))
    except FileNotFoundError:
        raise RootfsError(f"{root} is not a polyarch root file system (no {MARKER}); "
                          f"run: polyarch-runner rootfs build --arch ARCH {root}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RootfsError(f"{path}: unreadable ({exc}); rebuild: polyarch-runner rootfs build --arch ARCH {root}") from None


def check(root: Path, arch: Arch) -> RootInfo:
    """The root's description, once it is known to be a usable root of `arch`."""
    info = read_info(root)
    if info.arch != arch:
        raise RootfsError(f"{root} is a {info.arch.value} root, not {arch.value}")
    if not (root / "bin/sh").exists():
        raise RootfsError(f"{root} has no /bin/sh; rebuild: polyarch-runner rootfs build --arch {arch.value} {root}")
    return info


# mmdebstrap's own "I: ..." lines, in the order it prints them, then our two steps.
PHASES = ("running apt-get update", "downloading packages", "extracting archives", "installing essential packages",
          "installing remaining packages", "cleaning package lists", "success")
STEPS = PHASES


def mmdebstrap_phase(line: str) -> Optional[tuple[str, int, int]]:
    """('downloading packages', 2, len(STEPS)) for mmdebstrap's 'I: downloading packages with apt...'."""
    if not line.startswith("I: "):
        return None
    for i, phase in enumerate(PHASES):
        if line[3:].startswith(phase):
            return phase, i + 1, len(STEPS)
    return None


def mmdebstrap_cause(lines: list[str]) -> str:
    """The lines that say why mmdebstrap failed: apt's and its own `E:` and `W:` lines
    (the first `E:` is the cause), not the last lines, which after a failure are
    mmdebstrap's teardown (`... received signal PIPE`)."""
    errors = [line.strip() for line in lines if line.startswith("E: ")]
    if errors:
        warnings = [line.strip() for line in lines if line.startswith("W: ")][-1:]
        return " | ".join(errors[:2] + warnings)
    return " | ".join(line.strip() for line in lines[-3:])


def build(arch: Arch, root: Path, progress: Optional[Sink] = None, suite: Optional[str] = None) -> RootInfo:
    """Make the root at `root` (an existing one is kept). Needs root privileges, mmdebstrap
    and binfmt. `progress` gets each step (a progress bar in the CLI)."""
    if os.geteuid() != 0:
        raise RootfsError("building a root file system needs root: run it with sudo")
    if not binfmt.is_native(arch):
        binfmt.register(arch)
    root = root.absolute()

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"{arch.value} root", step, done, total)

    chosen = suite or default_suite(arch)
    if not _is_debian_root(root, arch):
        _debootstrap(arch, root, report, chosen)
    elif (root / MARKER).exists():
        chosen = read_info(root).suite
    report("done", len(STEPS), len(STEPS))
    info = RootInfo(arch, chosen, time.time())
    atomic_write(root / MARKER, json.dumps(dataclasses.asdict(info)).encode())
    return info


# ELF e_machine of each architecture's binaries, to check what a root really holds.
ELF_MACHINE = {Arch.AMD64: 62, Arch.ARM64: 183, Arch.ARMHF: 40, Arch.RISCV64: 243, Arch.PPC64EL: 21,
               Arch.S390X: 22, Arch.I386: 3}


def _is_debian_root(root: Path, arch: Arch) -> bool:
    """A finished Debian root of `arch` (ours, or one made by hand with mmdebstrap)."""
    python = root / "usr/bin/python3"
    if not (root / "etc/debian_version").exists() or not python.exists():
        return False
    header = (root / "usr/bin" / os.readlink(python) if python.is_symlink() else python).read_bytes()[:20]
    order = "little" if header[5:6] == b"\x01" else "big"
    machine = int.from_bytes(header[18:20], order)
    if header[:4] != b"\x7fELF" or machine != ELF_MACHINE[arch]:
        raise RootfsError(f"{root} holds a Debian root of another architecture (ELF machine {machine}), "
                          f"not {arch.value}; choose another folder")
    return True


def _debootstrap(arch: Arch, root: Path, report: Callable[[str, int, int], None], suite: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is not installed; run: apt-get install mmdebstrap")
    if root.exists() and any(root.iterdir()):
        raise RootfsError(f"{root} exists, is not empty and is not a polyarch root; choose an empty folder")
    # Build next to the target and rename at the end: an interrupted build leaves no
    # half root behind that a later run would take for a good one.
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    # mmdebstrap needs the parent to exist (a fresh machine has no /var/cache/polyarch).
    partial.parent.mkdir(parents=True, exist_ok=True)
    log.info("building a %s root file system with mmdebstrap in %s (a few minutes)", arch.value, root)
    cmd = ["mmdebstrap", f"--arch={arch.value}", "--variant=minbase", f"--include={','.join(PACKAGES)}",
           suite, str(partial)]
    code, output = progress_run(cmd, mmdebstrap_phase, report, keep=lambda line: line.startswith(("E: ", "W: ")))
    if code != 0:
        # Nothing half-built is left for a later run (or a person) to take for a root.
        shutil.rmtree(partial, ignore_errors=True)
        raise RootfsError(f"mmdebstrap failed (exit {code}): {mmdebstrap_cause(output)}")
    if root.exists():
        root.rmdir()
    partial.rename(root)
