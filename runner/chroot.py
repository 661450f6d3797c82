"""`polyarch-runner serve --rootfs DIR`: start the runner inside a foreign-arch root.

The launcher moves itself into a private mount namespace, mounts what a test needs
inside the root, then execs `chroot DIR python -m runner serve`: from then on the runner,
git, Python and the test command are all binaries of the root's architecture, run by
qemu-user. Because the mounts live in the namespace, they vanish with the process:
nothing is left mounted after a crash, and there is nothing to undo by hand.

Inside the root the runner sees, at the same paths as on the host: the config file's
folder (read-only), its work dir (read-write), the secret's folder and every local
repository (read-only).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from dispatcher.common.config import Config
from dispatcher.common.names import Arch

from . import binfmt
from .rootfs import RootfsError, check

CLONE_NEWNS = 0x00020000
PER_LINUX32 = 0x0008
LINUX32 = frozenset({Arch.I386, Arch.ARMHF})


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RootfsError(f"mount {' '.join(args)} failed: {result.stderr.strip()}")


def _bind(source: Path, root: Path, readonly: bool) -> None:
    target = root / str(source).lstrip("/")
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    _mount("--bind", str(source), str(target))
    if readonly:
        _mount("-o", "remount,bind,ro", str(target))


def prepare(config: Config, arch: Arch, root: Path) -> str:
    """Check everything and return the root's Python; raises one-line errors that say what fixes it."""
    if os.geteuid() != 0:
        raise RootfsError("--rootfs needs root (chroot and mounts): run as root or from the systemd unit")
    binfmt.require(arch)
    return check(root, arch).python


def exec_in_root(config: Config, arch: Arch, name: str, root: Path, python: str) -> None:
    """Never returns: mounts, then execs the runner inside `root`."""
    root = root.absolute()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise RootfsError(f"unshare(CLONE_NEWNS) failed: {os.strerror(ctypes.get_errno())}")
    _mount("--make-rprivate", "/")
    _mount("-t", "proc", "proc", str(root / "proc"))
    _bind(Path("/sys"), root, readonly=True)
    _mount("--rbind", "/dev", str(root / "dev"))
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "tmp"))
    if Path("/etc/resolv.conf").exists():
        # A copy, not a bind: the host's is often a symlink into /run.
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    config_dir = config.path.parent
    if config_dir == Path("/"):
        raise RootfsError(f"{config.path}: keep the config in a folder of its own to use --rootfs")
    _bind(config_dir, root, readonly=True)
    for extra in (config.token_for("runner").parent, *_local_repos(config)):
        if not _inside(extra, config_dir) and extra.exists():
            _bind(extra, root, readonly=True)
    work = config.runner.work_dir / name
    work.mkdir(parents=True, exist_ok=True)
    _bind(work, root, readonly=False)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "POLYARCH_EMULATED": "0" if binfmt.is_native(arch) else "1"}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID"):
        if key in os.environ:
            env[key] = os.environ[key]
    if "NOTIFY_SOCKET" in env and env["NOTIFY_SOCKET"].startswith("/"):
        _bind(Path(env["NOTIFY_SOCKET"]), root, readonly=False)
    if arch in LINUX32 and binfmt.is_native(arch):
        # A 32-bit root run natively by a 64-bit kernel would say x86_64 (or aarch64) to
        # uname: the 32-bit personality makes it say i686 (armv8l), as Debian's sbuild does.
        # Under qemu-user, qemu answers uname itself (armv7l).
        if libc.personality(PER_LINUX32) == -1:
            raise RootfsError(f"personality(PER_LINUX32) failed: {os.strerror(ctypes.get_errno())}")
    os.execve(shutil.which("chroot") or "/usr/sbin/chroot",  # noqa: S606 - argument list, no shell
              ["chroot", str(root), python, "-m", "runner", "serve", "--config", str(config.path),
               "--arch", arch.value, "--name", name], env)


def _local_repos(config: Config) -> list[Path]:
    out = []
    for repo in config.repos:
        url = repo.url[len("file://"):] if repo.url.startswith("file://") else repo.url
        if url.startswith("/"):
            out.append(Path(url))
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
