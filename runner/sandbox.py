"""How a job is isolated from the CI that runs it: who it runs as, what it may see.

A runner started as root runs every job through jail.py: as `runner.job_user`, in its
own mount and PID namespaces, seeing its checkout, its output folder, its repository's
mirror (read-only) and the folders of `runner.share`, and none of the CI's own files:
the config, the secrets and TLS keys, the dispatcher's and the observer's state, the
runner's work folder (other jobs, other runners, the spool). A root of another
architecture sees only those same folders, bound in at the same paths.

A runner that is not root cannot do any of that: its jobs run as itself, and it says so
once at start. Where the rules are decided (this module) is kept apart from the
mechanism (jail.py, which imports nothing of polyarch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from dispatcher.common.config import Config
from dispatcher.common.errors import SetupError
from dispatcher.common.git import local_git_dir
from dispatcher.common.names import Arch

from . import binfmt
from .cgroups import JobCgroups
from .rootfs import RootfsError, check, packages_digest

log = logging.getLogger("polyarch.runner")

JAIL = Path(__file__).with_name("jail.py")
JAIL_START = (sys.executable, "-I", "-S", str(JAIL))  # a jail's command line, before its arguments
HOME = "/tmp/home"  # noqa: S108 - in the job's private /tmp
# Lets the job's own git use its checkout, whose git folder belongs to the runner.
# Given through the environment, git's command-line level, the only one it trusts for this.
JOB_GIT = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


class IsolationError(SetupError):
    """Jobs cannot be isolated as configured (no job user, an unreachable work folder)."""


@dataclasses.dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int


@dataclasses.dataclass(frozen=True)
class JobPaths:
    """One job's folders, as the runner sees them (and, natively, as the job does)."""

    checkout: Path
    out: Path  # the job may write here: its JUnit file
    stage: Path  # an empty folder the jail builds the job's /tmp in
    mirror: Path
    url: str
    env: Optional[tuple[Path, bool]] = None  # the cached setup's folder, and whether read-only

    def with_env(self, folder: Path, readonly: bool) -> "JobPaths":
        return dataclasses.replace(self, env=(folder, readonly))


class Sandbox:
    def __init__(self, config: Config, runner: str, root: Optional[Root] = None) -> None:
        self.config = config
        self.rootfs = root.path if root is not None else None
        self.linux32 = root is not None and root.linux32
        self.user = _job_user(config.runner.job_user) if os.geteuid() == 0 else None
        settings = config.runner
        self.cgroups: Optional[JobCgroups] = None
        limited = settings.job_memory is not None or settings.job_pids is not None
        if self.user is not None and limited:
            # Only for a limit: the PID namespace already holds every process of a job, and
            # three cgroup folders made and removed per job cost about 6 ms of each.
            self.cgroups = JobCgroups.find(runner, settings.job_memory, settings.job_pids)
        elif limited and self.user is None:
            raise IsolationError("runner.job_memory and runner.job_pids need a runner started as root (it makes "
                                 "the jobs' cgroups); remove them or run the runner as root")
        if self.user is None:
            log.warning("the runner is not root: jobs run as %s, with the runner's files in reach (isolation is "
                        "off; run the runner as root to run jobs as runner.job_user)", pwd.getpwuid(os.geteuid()).pw_name)
        elif self.rootfs is None:
            _check_reachable(config.runner.work_dir.absolute(), self.user)
        for folder in settings.share:
            if not folder.is_dir():
                raise IsolationError(f"runner.share: {folder} is not a folder; make it (mkdir -p {folder}) or "
                                     "leave it out")

    @property
    def isolated(self) -> bool:
        return self.user is not None

    @property
    def owner(self) -> Optional[tuple[int, int]]:
        """Who a job's own folders belong to (uid, gid); None: the runner's user."""
        return (self.user.uid, self.user.gid) if self.user is not None else None

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """What the jail changes in the job's environment: who it is and where HOME is."""
        if self.user is None:
            return env
        return {**env, "HOME": HOME, "USER": self.user.name, "LOGNAME": self.user.name, **JOB_GIT}

    def hand_over(self, paths: JobPaths) -> None:
        """Give the job user its checkout and output folder (what git wrote as root)."""
        paths.out.mkdir(parents=True, exist_ok=True)
        paths.stage.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        os.chown(paths.out, self.user.uid, self.user.gid)
        # --from: only what is still root's (what this job's checkout wrote); the rest was
        # handed over before. chown -R never follows a symlink the job left (-P).
        result = subprocess.run(["chown", "-R", "--from=0:0", f"{self.user.uid}:{self.user.gid}", str(paths.checkout)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise IsolationError(f"cannot give {paths.checkout} to the job user: {result.stderr.strip()}")

    def cgroups_for(self, lease_id: str) -> list[Path]:
        return self.cgroups.create(lease_id) if self.cgroups is not None else []

    def verdict(self, cgroups: list[Path]) -> str:
        """The limit the job reached (it ends `error`), else ""; the job's cgroups go."""
        if self.cgroups is None:
            return ""
        try:
            return self.cgroups.verdict(cgroups)
        finally:
            self.cgroups.remove(cgroups)

    def forget(self, cgroups: list[Path]) -> None:
        """The cgroups of a job whose command never ran."""
        if self.cgroups is not None:
            self.cgroups.remove(cgroups)

    def argv(self, command: str, paths: JobPaths, report_fd: int, cgroups: list[Path]) -> list[str]:
        """The command line that runs `command` for this job, isolated."""
        if self.user is None:
            return ["/bin/sh", "-c", command]
        args = [*JAIL_START, "--root", str(self.rootfs or "/"),
                "--uid", str(self.user.uid), "--gid", str(self.user.gid), "--cwd", str(paths.checkout),
                "--home", HOME if self.rootfs is None else f"{self.rootfs}{HOME}", "--stage", str(paths.stage),
                "--report", str(report_fd)]
        for source, readonly in self._visible(paths):
            args += ["--bind", str(source), str(source), "ro" if readonly else "rw"]
        if self.rootfs is None:
            for hidden in self._hidden():
                args += ["--hide", str(hidden)]
        for folder in cgroups:
            args += ["--cgroup", str(folder)]
        if self.linux32:
            args.append("--linux32")
        return [*args, "--", command]

    def _visible(self, paths: JobPaths) -> list[tuple[Path, bool]]:
        out = [(paths.checkout, False), (paths.out, False), (paths.mirror, True)]
        if paths.env is not None:  # written by the setup, read-only to the tests after it
            out.append(paths.env)
        source = local_git_dir(paths.url)
        if source is not None:  # the mirror borrows its objects (see common/git.py borrow)
            out.append((source.absolute(), True))
        out += [(p, False) for p in self.config.runner.share]
        return out

    def _hidden(self) -> list[Path]:
        """What the job must not read, though the host's file system is otherwise its own."""
        c = self.config
        found = [c.runner.work_dir, c.dispatcher.state_dir, c.observer.state_dir, c.path,
                 c.token_for("runner"), c.token_for("observer"), c.token_for("dispatcher")]
        for section in (c.dispatcher, c.observer, c.runner):
            found += [p for p in (section.tls_key, section.tls_cert) if p is not None]
        return sorted({p.absolute() for p in found})

    def prepare_root(self) -> None:
        """Once per start: the root resolves names as the host does."""
        if self.rootfs is None or not Path("/etc/resolv.conf").exists():
            return
        # A copy, not a bind: the host's is often a symlink into /run.
        target = self.rootfs / "etc/resolv.conf"
        target.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", target)


# What `uname -m` says in a root of each architecture: under qemu-user, qemu's answer; a
# 32-bit root run natively, the 32-bit personality's.
MACHINE = {Arch.AMD64: "x86_64", Arch.ARM64: "aarch64", Arch.ARMHF: "armv7l", Arch.RISCV64: "riscv64",
           Arch.PPC64EL: "ppc64le", Arch.S390X: "s390x", Arch.I386: "i686"}
LINUX32 = frozenset({Arch.I386, Arch.ARMHF})


@dataclasses.dataclass(frozen=True)
class Root:
    """A root of another architecture that this host can run jobs in."""

    path: Path
    arch: Arch
    emulated: bool  # through qemu-user; else natively (i386 on amd64, armhf on arm64)
    qemu: str = ""  # the qemu-user version, for the results
    digest: str = ""  # of its installed packages: a cached setup made in it is valid in it only
    suite: str = ""

    @property
    def described(self) -> str:
        """What the results say of it: "arm64 bookworm 1a2b3c4d5e6f"."""
        return f"{self.arch.value} {self.suite} {self.digest}"

    @property
    def linux32(self) -> bool:
        return self.arch in LINUX32 and not self.emulated

    @property
    def machine(self) -> str:
        return "armv8l" if self.linux32 and self.arch == Arch.ARMHF else MACHINE[self.arch]


def open_root(path: Path, arch: Arch) -> Root:
    """Check everything a root needs; one-line errors that say what fixes it."""
    if os.geteuid() != 0:
        raise RootfsError("--rootfs needs root (namespaces, mounts, chroot): run as root or from the systemd unit")
    info = check(path, arch)
    binfmt.require(arch)
    return Root(path.absolute(), arch, emulated=not binfmt.is_native(arch), qemu=binfmt.qemu_version(arch),
                digest=packages_digest(path), suite=info.suite.split()[0] if info.suite else "")


def _job_user(name: str) -> JobUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise IsolationError(f"runner.job_user {name!r} does not exist; create it with: useradd --system "
                             f"--user-group --no-create-home --shell /usr/sbin/nologin {name} "
                             "(scripts/setup.sh does), or name another") from None
    if entry.pw_uid == 0:
        raise IsolationError(f"runner.job_user {name!r} is root: jobs must run as an unprivileged user")
    return JobUser(name, entry.pw_uid, entry.pw_gid)


def _check_reachable(work_dir: Path, user: JobUser) -> None:
    """The job's checkout keeps its path, so the job user must be able to pass through the
    folders above the work folder (those in /tmp are the job's own, made by the jail)."""
    if work_dir.is_relative_to("/tmp"):  # noqa: S108 - a path compared, nothing written
        return
    for folder in reversed(work_dir.parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            return  # made by the runner, searchable
        if not info.st_mode & 0o001 and not (info.st_uid == user.uid and info.st_mode & 0o100):
            raise IsolationError(f"the job user {user.name} cannot reach runner.work_dir {work_dir}: {folder} is "
                                 f"mode {info.st_mode & 0o777:o}; chmod o+x {folder}, or choose another work_dir")
