"""The one harness of real daemons, for the tests (tests/conftest.py), the benchmarks and
the demo (scripts/demo.py): a daemon started as a process with its own log, ready when it
says READY=1 on a notify socket the harness owns (systemd's protocol, as under a unit),
and stopped or killed for real. Also what the end-to-end benchmarks share: a repository,
a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def new_repo(root: Path) -> Path:
    """A repository at root/upstream with one empty commit on main."""
    repo = root / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.invalid")
    git(repo, "config", "user.name", "Bench")
    git(repo, "commit", "-q", "--allow-empty", "-m", "start")
    return repo


def write_config(root: Path, repo: Path, test_command: str = "true", poll_interval: float = 5.0,
                 watch: bool = True, max_backfill: int = 100, idle_timeout: Optional[float] = None,
                 arch: str = "amd64") -> Path:
    config = root / "polyarch.toml"
    idle = f"idle_timeout = {idle_timeout}" if idle_timeout is not None else ""
    config.write_text(textwrap.dedent(f"""\
        [dispatcher]
        listen = "127.0.0.1:0"
        {idle}
        [observer]
        dispatcher = "127.0.0.1:0"
        poll_interval = {poll_interval}
        watch = {str(watch).lower()}
        max_backfill = {max_backfill}
        [runner]
        dispatcher = "127.0.0.1:0"
        [[repos]]
        name = "bench"
        url = "{repo}"
        architectures = ["{arch}"]
        test_command = "{test_command}"
        """))
    return config


def wait_file(path: Path, timeout: float = 60) -> float:
    """Poll for `path`; returns the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {path} did not appear within {timeout} s")
        time.sleep(0.002)
    return time.monotonic()


class Daemon:
    """One polyarch daemon (`package` serve --config `config` `args`) as a real child process.

    `command` replaces `python -m package` (the demo runs the console scripts); `prefix`
    goes before it (a test runs a daemon under another program)."""

    def __init__(self, package: str, config: Path, cwd: Path, log_path: Path, args: Sequence[str] = (),
                 prefix: Sequence[str] = (), command: Optional[Sequence[str]] = None) -> None:
        self.package, self.config, self.cwd, self.log_path = package, config, cwd, log_path
        self.args, self.prefix = tuple(args), tuple(prefix)
        self.command = tuple(command) if command else (sys.executable, "-m", package)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        # Abstract namespace: a tmp_path may be longer than a socket path may be.
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify_name = f"polyarch-rig-{os.getpid()}-{id(self)}-{time.monotonic_ns()}"
        self.notify.bind("\0" + self.notify_name)

    def start(self) -> "Daemon":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.prefix, *self.command, "serve", "--config", str(self.config),
                                          *self.args], cwd=self.cwd, stdout=log, stderr=log,
                                         env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                  NOTIFY_SOCKET="@" + self.notify_name))
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the daemon sends READY=1; RuntimeError if it exits first or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.package} exited before READY=1; its log {self.log_path}:\n"
                                   f"{self.log()[-2000:]}")
            self.notify.settimeout(min(0.2, max(0.01, deadline - time.monotonic())))
            try:
                message = self.notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            if "READY=1" in message.split("\n"):
                return
        raise RuntimeError(f"no READY=1 from {self.package} within {timeout} s; its log {self.log_path}")

    @property
    def started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.package} was never started")
        return self.proc

    @property
    def pid(self) -> int:
        return self.started.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.started.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.started.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
        return self.started.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Kill it if it still runs, and close the notify socket."""
        if self.alive:
            self.kill()
        self.notify.close()


@contextlib.contextmanager
def daemons(root: Path, config: Path, runners: int = 1,
            runner_args: tuple[str, ...] = ()) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Dispatcher, runners r0.., observer as real processes logging to root/*.log; SIGTERM at the end.

    Yields the processes by log name (dispatcher, runner or runner r0.., observer)."""
    plan = ([("dispatcher", [])] + [("runner", [*runner_args, "--name", f"r{i}"]) for i in range(runners)]
            + [("observer", [])])
    started: dict[str, Daemon] = {}
    try:
        for name, extra in plan:
            suffix = "" if name != "runner" or runners == 1 else extra[-1]
            started[name + suffix] = Daemon(name, config, root, root / f"{name}{suffix}.log", extra).start()
            if name == "dispatcher":
                started[name].wait_ready(30)
        yield {name: d.proc for name, d in started.items() if d.proc is not None}
    finally:
        for d in started.values():
            if d.alive:
                d.signal(signal.SIGTERM)
        for d in started.values():
            if d.proc is not None:
                d.proc.wait(timeout=60)
            d.close()


def stop_all(started: Sequence[Daemon], timeout: float = 60) -> None:
    """SIGTERM each daemon still running, last started first, and wait for it."""
    for d in reversed(started):
        if d.alive:
            d.stop(timeout)
        d.close()


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MiB (`VmHWM` for its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for process {pid}")


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def write_json(path: Path, figures: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")


def command_seconds(test: str = "true", runs: int = 20, rootfs: Optional[Path] = None) -> float:
    """A test command's own time through `sh -c` (in `rootfs`, the root's own sh, under
    qemu-user for another architecture): the fastest of `runs`. (A median taken on this
    noisy VM once read 0.26 s for `sleep 0.2` and gave utilisations over 100 %.)"""
    return min(command_samples(test, runs, rootfs))


def command_samples(test: str = "true", runs: int = 20, rootfs: Optional[Path] = None) -> list[float]:
    """Each of `runs` timings of the command alone, as command_seconds takes them."""
    samples = []
    prefix = ["chroot", str(rootfs)] if rootfs is not None else []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*prefix, "/bin/sh", "-c", test], check=True)
        samples.append(time.perf_counter() - began)
    return samples
