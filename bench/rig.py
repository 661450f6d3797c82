"""What the end-to-end benchmarks share: a repository, a config, the real daemons."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

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
                 watch: bool = True, max_backfill: int = 100) -> Path:
    config = root / "polyarch.toml"
    config.write_text(textwrap.dedent(f"""\
        [dispatcher]
        listen = "127.0.0.1:0"
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
        architectures = ["amd64"]
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


@contextlib.contextmanager
def daemons(root: Path, config: Path, runners: int = 1) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Dispatcher, runners r0.., observer as real processes logging to root/*.log; SIGTERM at the end.

    Yields the processes by log name (dispatcher, runner or runner r0.., observer)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    plan = [("dispatcher", [])] + [("runner", ["--name", f"r{i}"]) for i in range(runners)] + [("observer", [])]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, extra in plan:
            suffix = "" if name != "runner" or runners == 1 else extra[-1]
            with open(root / f"{name}{suffix}.log", "wb") as log:
                procs[name + suffix] = subprocess.Popen(
                    [sys.executable, "-m", name, "serve", "--config", str(config), *extra],
                    cwd=root, stdout=log, stderr=log, env=env)
            if name == "dispatcher":
                wait_file(root / "var/dispatcher/address", 30)
        yield procs
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)


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


def command_seconds(test: str = "true", runs: int = 20) -> float:
    """A test command's own time through `sh -c`: the fastest of `runs`. (A median taken
    on this noisy VM once read 0.26 s for `sleep 0.2` and gave utilisations over 100 %.)"""
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(["sh", "-c", test], check=True)
        samples.append(time.perf_counter() - began)
    return min(samples)
