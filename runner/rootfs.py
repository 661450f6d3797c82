"""Debian root file systems of other architectures, for emulated runners.

`build` makes one with mmdebstrap from the machine's apt sources and installs polyarch
into a venv inside it: dependencies as wheels downloaded on the host (all pure Python,
so no pip runs under emulation and no network is needed inside), polyarch's own three
packages copied in. A second build only refreshes polyarch and takes seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher import __version__
from dispatcher.common.errors import SetupError
from dispatcher.common.files import atomic_write
from dispatcher.common.names import Arch
from dispatcher.common.progress import Sink
from dispatcher.common.progress import run as progress_run

from . import binfmt

log = logging.getLogger("polyarch.runner")

MARKER = Path("etc/polyarch-rootfs.json")
VENV = Path("opt/polyarch/venv")
WHEELS = Path("opt/polyarch/wheels")
PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
SUITE = "bookworm"
# Debian releases an architecture first appeared in, where the default one lacks it.
SUITE_FOR = {Arch.RISCV64: "trixie"}


def default_suite(arch: Arch) -> str:
    return SUITE_FOR.get(arch, SUITE)
# What the runner imports inside the root (the observer's watchfiles is not needed there).
RUNNER_DEPS = ("gitpython", "gitdb", "smmap", "click", "rich", "markdown-it-py", "mdurl", "pygments")
PIP_PLATFORM = {Arch.AMD64: "x86_64", Arch.ARM64: "aarch64", Arch.ARMHF: "armv7l", Arch.RISCV64: "riscv64",
                Arch.PPC64EL: "ppc64le", Arch.S390X: "s390x", Arch.I386: "i686"}


class RootfsError(SetupError):
    """The root file system is missing, incomplete or cannot be built."""


@dataclasses.dataclass(frozen=True)
class RootInfo:
    arch: Arch
    polyarch: str
    deps: tuple[str, ...]
    built_at: float

    @property
    def python(self) -> str:
        return f"/{VENV}/bin/python"


def read_info(root: Path) -> RootInfo:
    path = root / MARKER
    try:
        data = json.loads(path.read_text())
        return RootInfo(Arch(data["arch"]), data["polyarch"], tuple(data["deps"]), data["built_at"])
    except FileNotFoundError:
        raise RootfsError(f"{root} is not a polyarch root file system (no {MARKER}); "
                          f"run: polyarch-runner rootfs build --arch ARCH {root}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise RootfsError(f"{path}: unreadable ({exc}); rebuild: polyarch-runner rootfs build --arch ARCH {root}") from None


def check(root: Path, arch: Arch) -> RootInfo:
    info = read_info(root)
    if info.arch != arch:
        raise RootfsError(f"{root} is a {info.arch.value} root, not {arch.value}")
    if not (root / VENV / "bin" / "python").exists():
        raise RootfsError(f"{root} has no polyarch venv; run: polyarch-runner rootfs build --arch {arch.value} {root}")
    return info


def _pinned_deps() -> tuple[str, ...]:
    """The host's own versions, so the root runs what the tests ran."""
    pins = []
    for dist in RUNNER_DEPS:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(dist)
    return tuple(pins)


# mmdebstrap's own "I: ..." lines, in the order it prints them, then our two steps.
PHASES = ("running apt-get update", "downloading packages", "extracting archives", "installing essential packages",
          "installing remaining packages", "cleaning package lists", "success")
STEPS = PHASES + ("installing Python packages", "copying polyarch")


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
    """Make (or refresh) the root at `root`. Needs root privileges, mmdebstrap and binfmt.
    `progress` gets each step (a progress bar in the CLI)."""
    if os.geteuid() != 0:
        raise RootfsError("building a root file system needs root: run it with sudo")
    if not binfmt.is_native(arch):
        binfmt.register(arch)
    root = root.absolute()
    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"{arch.value} root", step, done, total)

    if not _is_debian_root(root, arch):
        _debootstrap(arch, root, report, suite or default_suite(arch))
    deps = _pinned_deps()
    previous = read_info(root) if (root / MARKER).exists() else None
    report(STEPS[-2], len(STEPS) - 2, len(STEPS))
    if previous is None or previous.deps != deps or not (root / VENV / "bin" / "python").exists():
        _install_deps(arch, root, deps)
    report(STEPS[-1], len(STEPS) - 1, len(STEPS))
    _copy_polyarch(root)
    report("done", len(STEPS), len(STEPS))
    info = RootInfo(arch, __version__, deps, time.time())
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


def _install_deps(arch: Arch, root: Path, deps: tuple[str, ...]) -> None:
    wheels = root / WHEELS
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    cpu = PIP_PLATFORM[arch]
    log.info("downloading wheels for %s: %s", arch.value, ", ".join(deps))
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.11", "--implementation", "cp", "--platform", "any",
                "--platform", f"manylinux2014_{cpu}", "-d", str(wheels), *deps]
    _run(download, "pip download")
    venv = Path("/") / VENV
    if not (root / VENV / "bin" / "python").exists():
        log.info("creating the venv %s inside the root (emulated, takes a while)", venv)
        _run(["chroot", str(root), "python3", "-m", "venv", "--without-pip", str(venv)], "python3 -m venv")
    # The host's pip installs into the root's venv: pure-Python wheels, no code runs.
    site = _site_packages(root)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
          "--target", str(site), "--upgrade", *[str(w) for w in sorted(wheels.glob("*.whl"))]], "pip install")


def _site_packages(root: Path) -> Path:
    found = sorted((root / VENV / "lib").glob("python3*/site-packages"))
    if not found:
        raise RootfsError(f"no site-packages in {root / VENV}")
    return found[-1]


# What a root carries of polyarch: the runner and the kit it imports, never the observer
# or the hub (tests/test_layering.py keeps the runner to the kit).
ROOT_PACKAGES = ("runner", "dispatcher")
KIT = ("__init__.py", "common", "wire", "results")


def _copy_polyarch(root: Path) -> None:
    site = _site_packages(root)
    source = Path(__file__).resolve().parent.parent
    shutil.rmtree(site / "observer", ignore_errors=True)  # carried by roots built before the kit was fenced
    for package in ROOT_PACKAGES:
        target = site / package
        tmp = Path(tempfile.mkdtemp(dir=site, prefix=f".{package}-"))
        if package == "dispatcher":
            (tmp / package).mkdir()
            for part in KIT:
                src = source / package / part
                if src.is_dir():
                    shutil.copytree(src, tmp / package / part, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, tmp / package / part)
        else:
            shutil.copytree(source / package, tmp / package, ignore=shutil.ignore_patterns("__pycache__"))
        if target.exists():
            shutil.rmtree(target)
        (tmp / package).rename(target)
        tmp.rmdir()


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = " | ".join(result.stdout.strip().splitlines()[-3:])
        raise RootfsError(f"{what} failed (exit {result.returncode}): {tail}")
