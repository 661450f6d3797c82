"""Debian root file systems of other architectures, for emulated jobs.

`build` makes one with mmdebstrap from the machine's apt sources. It holds nothing of
polyarch: the runner stays on the host and runs only the job's commands inside the root
(runner/jail.py), so a root is an ordinary Debian system of its architecture, with
Python and git for the suites that need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher.common.config import check_package
from dispatcher.common.errors import InvalidName, SetupError
from dispatcher.common.files import atomic_write
from dispatcher.common.names import Arch
from dispatcher.common.progress import Sink
from dispatcher.common.progress import run as progress_run

from . import binfmt

log = logging.getLogger("polyarch.runner")

MARKER = Path("etc/polyarch-rootfs.json")
PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
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
    packages: tuple[str, ...] = ()  # asked for beyond PACKAGES ([arch.A] packages, --include)
    digest: str = ""  # of what is installed (packages_digest), when it was built


def read_info(root: Path) -> RootInfo:
    path = root / MARKER
    try:
        data = json.loads(path.read_text())
        # Roots built before the runner left them held a copy of polyarch; its keys are ignored.
        return RootInfo(Arch(data["arch"]), str(data.get("suite", SUITE)), float(data["built_at"]),
                        tuple(str(p) for p in data.get("packages", ())), str(data.get("digest", "")))
    except FileNotFoundError:
        raise RootfsError(f"{root} is not a polyarch root file system (no {MARKER}); "
                          f"run: polyarch-runner rootfs build --arch ARCH {root}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RootfsError(f"{path}: unreadable ({exc}); rebuild: polyarch-runner rootfs build --arch ARCH {root}") from None


def packages_digest(root: Path) -> str:
    """12 hex digits over the root's installed packages (dpkg's status file): it changes
    with every package installed, removed or upgraded."""
    try:
        return hashlib.sha256((root / "var/lib/dpkg/status").read_bytes()).hexdigest()[:12]
    except OSError:
        return "no-dpkg"


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


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where a root's packages come from: a suite, its updates and security suites."""

    suite: str
    mirror: str
    security: str
    components: str = "main"
    left_out: tuple[str, ...] = ()  # secondary suites dropped after their index failed

    def lines(self) -> list[str]:
        """mmdebstrap's MIRROR arguments, one apt line each."""
        out = [f"deb {self.mirror} {self.suite} {self.components}"]
        for name, url in ((f"{self.suite}-updates", self.mirror), (f"{self.suite}-security", self.security)):
            if name not in self.left_out:
                out.append(f"deb {url} {name} {self.components}")
        return out

    @property
    def secondary(self) -> tuple[str, str]:
        return f"{self.suite}-updates", f"{self.suite}-security"


def host_sources(suite: str, mirror: Optional[str] = None, security: Optional[str] = None) -> Sources:
    """The machine's own Debian mirror and security mirror (its apt sources), so a lab
    behind a proxy or with a local mirror builds from what it already trusts."""
    found: dict[str, str] = {}
    text = ""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        try:
            text += path.read_text() + "\n"
        except OSError:
            continue
    for url in re.findall(r"(?:URIs:|^deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
        key = "security" if url.rstrip("/").endswith("-security") else "main" if url.rstrip("/").endswith(
            "/debian") else None
        if key is not None:
            found.setdefault(key, url)
    return Sources(suite, mirror or found.get("main", DEFAULT_MIRROR), security or found.get("security", DEFAULT_SECURITY))


DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
SECONDARY_TRIES = 2  # a mirror caught mid-sync ("File has unexpected size") often heals in seconds


def build(arch: Arch, root: Path, progress: Optional[Sink] = None, suite: Optional[str] = None,
          mirror: Optional[str] = None, security: Optional[str] = None, include: tuple[str, ...] = (),
          upgrade: bool = False) -> RootInfo:
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
    try:
        wanted = tuple(dict.fromkeys(check_package(p) for p in include))
    except InvalidName as exc:
        raise RootfsError(f"--include: {exc}") from None
    if not _is_debian_root(root, arch):
        _debootstrap(arch, root, report, host_sources(chosen, mirror, security), (*PACKAGES, *wanted))
    else:
        previous = read_info(root) if (root / MARKER).exists() else None
        if previous is not None:
            chosen = previous.suite
            wanted = tuple(dict.fromkeys((*previous.packages, *wanted)))
        have = installed(root)
        missing = tuple(p for p in dict.fromkeys((*PACKAGES, *wanted)) if p not in have)
        if missing or upgrade:
            _apt_in_root(arch, root, missing)
    report("done", len(STEPS), len(STEPS))
    info = RootInfo(arch, chosen, time.time(), wanted, packages_digest(root))
    atomic_write(root / MARKER, json.dumps(dataclasses.asdict(info)).encode())
    return info


def installed(root: Path) -> set[str]:
    """The packages dpkg has installed in the root (read from its status file)."""
    names, name = set(), ""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return names
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line[9:].strip()
        elif line.startswith("Status: ") and line.endswith(" installed") and name:
            names.add(name)
    return names


def _apt_in_root(arch: Arch, root: Path, packages: tuple[str, ...]) -> None:
    """On an existing root: install what is missing of `packages` and upgrade the rest,
    with apt inside the root (emulated for another architecture), in a mount namespace
    of its own so nothing stays mounted."""
    resolv = root / "etc/resolv.conf"
    if Path("/etc/resolv.conf").exists():
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
    apt = "apt-get -q -y -o Dpkg::Options::=--force-confold"
    inner = f"export DEBIAN_FRONTEND=noninteractive; apt-get -q update && {apt} upgrade"
    if packages:  # names checked by check_package: nothing else reaches the shell
        inner += f" && {apt} install {' '.join(packages)}"
    where = shlex.quote(str(root))
    script = (f"mount -t proc proc {where}/proc && mount --rbind /dev {where}/dev && "
              f"chroot {where} sh -c {shlex.quote(inner)}")
    log.info("updating the %s root %s%s", arch.value, root, f" with {', '.join(packages)}" if packages else "")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        cause = mmdebstrap_cause(done.stdout.splitlines())
        raise RootfsError(f"apt in the {arch.value} root {root} failed (exit {done.returncode}): {cause}")


# ELF e_machine of each architecture's binaries, to check what a root really holds.
ELF_MACHINE = {Arch.AMD64: 62, Arch.ARM64: 183, Arch.ARMHF: 40, Arch.RISCV64: 243, Arch.PPC64EL: 21,
               Arch.S390X: 22, Arch.I386: 3}


def _is_debian_root(root: Path, arch: Arch) -> bool:
    """A finished Debian root of `arch` (ours, or one made by hand with mmdebstrap)."""
    if not (root / "etc/debian_version").exists() or not (root / "usr/bin/python3").exists():
        return False
    machine = _elf_machine(root, Path("usr/bin/python3"))
    if machine != ELF_MACHINE[arch]:
        raise RootfsError(f"{root} holds a Debian root of another architecture (ELF machine {machine}), "
                          f"not {arch.value}; choose another folder")
    return True


def _debootstrap(arch: Arch, root: Path, report: Callable[[str, int, int], None], sources: Sources,
                 packages: tuple[str, ...]) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is not installed; run: apt-get install mmdebstrap")
    if root.exists() and any(root.iterdir()):
        raise RootfsError(f"{root} exists, is not empty and is not a polyarch root; choose an empty folder")
    # Build next to the target and rename at the end: an interrupted build leaves no
    # half root behind that a later run would take for a good one.
    partial = root.with_name(root.name + ".partial")
    # mmdebstrap needs the parent to exist (a fresh machine has no /var/cache/polyarch).
    partial.parent.mkdir(parents=True, exist_ok=True)
    failures: dict[str, int] = {}
    while True:
        if partial.exists():
            shutil.rmtree(partial)
        log.info("building a %s root file system with mmdebstrap in %s from %s (a few minutes)", arch.value, root,
                 ", ".join(line.split()[2] for line in sources.lines()))
        cmd = ["mmdebstrap", f"--arch={arch.value}", "--variant=minbase", f"--include={','.join(packages)}",
               sources.suite, str(partial), *sources.lines()]
        code, output = progress_run(cmd, mmdebstrap_phase, report, keep=lambda line: line.startswith(("E: ", "W: ")))
        if code == 0:
            break
        # Nothing half-built is left for a later run (or a person) to take for a root.
        shutil.rmtree(partial, ignore_errors=True)
        cause = mmdebstrap_cause(output)
        broken = next((name for name in sources.secondary if name not in sources.left_out and name in cause), None)
        if broken is None:
            raise RootfsError(f"mmdebstrap failed (exit {code}): {cause}")
        failures[broken] = failures.get(broken, 0) + 1
        if failures[broken] >= SECONDARY_TRIES:
            # Updates and security fixes can come later; the root itself is what the job needs.
            log.warning("leaving %s out of the %s root: its index failed %d times (%s); the root gets its fixes "
                        "later with: chroot %s apt-get update && chroot %s apt-get upgrade",
                        broken, arch.value, failures[broken], cause, root, root)
            sources = dataclasses.replace(sources, left_out=(*sources.left_out, broken))
        else:
            log.warning("the index of %s failed (%s); trying again", broken, cause)
            time.sleep(5)
    if root.exists():
        root.rmdir()
    partial.rename(root)


def import_tarball(arch: Arch, tarball: Path, root: Path) -> RootInfo:
    """Make `root` from any Linux root's tarball (a `docker export`, a distribution's
    image), checking from its /bin/sh that it really is of `arch`."""
    if os.geteuid() != 0:
        raise RootfsError("importing a root file system needs root (its files keep their owners): run it with sudo")
    if not tarball.is_file():
        raise RootfsError(f"{tarball}: no such file; give the tarball of a root file system (tar, .tar.gz, .tar.xz)")
    root = root.absolute()
    if root.exists() and any(root.iterdir()):
        raise RootfsError(f"{root} exists and is not empty; choose an empty folder")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    done = subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball.absolute()), "-C", str(partial)],
                          capture_output=True, text=True)
    try:
        if done.returncode != 0:
            raise RootfsError(f"tar could not unpack {tarball}: {done.stderr.strip().splitlines()[-1:]}")
        machine = _elf_machine(partial, Path("bin/sh"))
        if machine != ELF_MACHINE[arch]:
            theirs = next((a.value for a, m in ELF_MACHINE.items() if m == machine), f"ELF machine {machine}")
            raise RootfsError(f"{tarball} holds a root of {theirs}, not {arch.value} (judged by its /bin/sh)")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():
        root.rmdir()
    partial.rename(root)
    info = RootInfo(arch, f"imported from {tarball.name}", time.time())
    atomic_write(root / MARKER, json.dumps(dataclasses.asdict(info)).encode())
    return info


def _elf_machine(root: Path, inside: Path, hops: int = 10) -> int:
    """The ELF machine of a file in `root`, following symlinks as the root would."""
    path = root / inside
    for _ in range(hops):
        if not path.is_symlink():
            break
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    try:
        header = path.read_bytes()[:20]
    except OSError as exc:
        raise RootfsError(f"the root has no usable /{inside} ({exc.strerror}): is it a Linux root file system?") from None
    if header[:4] != b"\x7fELF":
        raise RootfsError(f"/{inside} in the root is not an ELF binary: is it a Linux root file system?")
    return int.from_bytes(header[18:20], "little" if header[5:6] == b"\x01" else "big")
