"""A cgroup per job, and the limits `runner.job_memory` and `runner.job_pids` on it.

The kernel offers cgroups in one of three shapes, and a lab machine may have any:
- cgroup v2 only (current systemd): the runner's own cgroup, delegated to it by its unit
  (`Delegate=yes`), gets a `runner` leaf for the runner itself and one leaf per job,
  because v2 lets a cgroup with processes in it hand no controller down;
- v1 only, or hybrid (v2 mounted for grouping, the controllers on v1): each controller's
  own hierarchy gets a job folder under the runner's cgroup there;
- neither controller: then a job is still contained by its PID namespace (jail.py), and
  a limit in the config is refused at start, since it could not be kept.

The jail enters the job's folders before it forks, so everything the job starts is
counted and limited. After the job, `verdict` reads the kernel's own counters (an OOM
kill, a refused fork): a job that reached a limit ends `error`, naming the limit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Optional

from dispatcher.common.errors import SetupError

log = logging.getLogger("polyarch.runner")


class CgroupError(SetupError):
    """A configured limit cannot be kept on this machine."""


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Where this runner may make job cgroups in one hierarchy, and what it limits there."""

    base: Path  # the folder job cgroups are made in
    v2: bool
    controllers: frozenset[str]  # those of "memory" and "pids" this hierarchy limits


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, options) of every cgroup file system."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if tail and tail[0] in ("cgroup", "cgroup2"):
            found.append((tail[0], Path(fields[4]), set(tail[2].split(",")) if len(tail) > 2 else set()))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path in that hierarchy."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _v2_base(mount: Path, own: str, runner: str) -> Optional[Hierarchy]:
    folder = mount / own.lstrip("/")
    if not os.access(folder, os.W_OK):
        return None
    available = set((folder / "cgroup.controllers").read_text().split())
    wanted = available & {"memory", "pids"}
    if own == "/":
        # The root cgroup may hold processes and hand controllers down at once.
        base = folder / "polyarch" / runner
        _enable(folder, wanted)
        base.parent.mkdir(exist_ok=True)
        _enable(base.parent, wanted)
        base.mkdir(exist_ok=True)
    else:
        # A delegated cgroup: move the runner into a leaf of its own first.
        leaf = folder / "runner"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        base = folder
    _enable(base, wanted)
    return Hierarchy(base, True, frozenset(wanted))


def _enable(folder: Path, controllers: set[str]) -> None:
    if controllers:
        try:
            (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(controllers)))
        except OSError as exc:
            log.warning("cannot hand %s down in %s: %s", ", ".join(sorted(controllers)), folder, exc)


class JobCgroups:
    def __init__(self, hierarchies: list[Hierarchy], memory: Optional[int], pids: Optional[int]) -> None:
        self.hierarchies = hierarchies
        self.memory, self.pids = memory, pids

    @classmethod
    def find(cls, runner: str, memory: Optional[int], pids: Optional[int]) -> "JobCgroups":
        """Where this machine lets the runner (root) make job cgroups; CgroupError when a
        configured limit has no controller to keep it."""
        mounts, own = _mounts(), _own_paths()
        chosen: list[Hierarchy] = []
        covered: set[str] = set()
        for fstype, mount, _ in mounts:
            if fstype == "cgroup2":
                try:
                    found = _v2_base(mount, own.get("", "/"), runner)
                except OSError as exc:
                    log.warning("cannot use cgroup v2 at %s: %s", mount, exc)
                    continue
                if found is not None:
                    chosen.append(found)
                    covered |= found.controllers
        for fstype, mount, options in mounts:
            if fstype != "cgroup":
                continue
            for controller in ("memory", "pids"):
                if controller in options and controller not in covered:
                    base = mount / own.get(controller, "/").lstrip("/") / f"polyarch-{runner}"
                    try:
                        base.mkdir(exist_ok=True)
                    except OSError as exc:
                        log.warning("cannot use the %s cgroup at %s: %s", controller, mount, exc)
                        continue
                    chosen.append(Hierarchy(base, False, frozenset({controller})))
                    covered.add(controller)
        for key, value, controller in (("job_memory", memory, "memory"), ("job_pids", pids, "pids")):
            if value is not None and controller not in covered:
                raise CgroupError(f"runner.{key} needs the {controller} cgroup controller, which this machine "
                                  f"does not offer to the runner; remove {key} or enable the controller "
                                  "(for a systemd unit: Delegate=yes)")
        return cls(chosen, memory, pids)

    def create(self, lease_id: str) -> list[Path]:
        """The job's cgroup folders, limits written; the jail enters each."""
        folders = []
        for h in self.hierarchies:
            folder = h.base / f"job-{lease_id}"
            folder.mkdir(exist_ok=True)
            if "memory" in h.controllers and self.memory is not None:
                if h.v2:
                    _write(folder / "memory.max", self.memory)
                    _write(folder / "memory.swap.max", 0, optional=True)  # a limit, not a slow swap
                else:
                    _write(folder / "memory.limit_in_bytes", self.memory)
                    _write(folder / "memory.memsw.limit_in_bytes", self.memory, optional=True)
            if "pids" in h.controllers and self.pids is not None:
                _write(folder / "pids.max", self.pids)
            folders.append(folder)
        return folders

    def verdict(self, folders: list[Path]) -> str:
        """Why the job is `error`: the limit it reached, or ""."""
        reasons = []
        for h, folder in zip(self.hierarchies, folders):
            if "memory" in h.controllers and self.memory is not None:
                events = _counters(folder / ("memory.events" if h.v2 else "memory.oom_control"))
                if events.get("oom_kill", 0) > 0:
                    reasons.append(f"killed for using more memory than runner.job_memory ({_size(self.memory)})")
            if "pids" in h.controllers and self.pids is not None:
                refused = _counters(folder / "pids.events").get("max", 0)
                if refused > 0:
                    reasons.append(f"reached runner.job_pids ({self.pids} processes; forks refused: {refused})")
        return "; ".join(reasons)

    def remove(self, folders: list[Path]) -> None:
        for folder in folders:
            for _ in range(50):  # the namespace's last processes take a moment to be reaped
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.warning("cannot remove the job cgroup %s (processes left in it?)", folder)


def _write(path: Path, value: int, optional: bool = False) -> None:
    try:
        path.write_text(str(value))
    except FileNotFoundError:
        if not optional:
            raise


def _counters(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"
