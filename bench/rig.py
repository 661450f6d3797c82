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
def daemons(root: Path, config: Path, runners: int = 1) -> Iterator[None]:
    """Dispatcher, runners r0.., observer as real processes logging to root/*.log; SIGTERM at the end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    plan = [("dispatcher", [])] + [("runner", ["--name", f"r{i}"]) for i in range(runners)] + [("observer", [])]
    procs = []
    try:
        for name, extra in plan:
            suffix = "" if name != "runner" or runners == 1 else extra[-1]
            with open(root / f"{name}{suffix}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", name, "serve", "--config", str(config), *extra],
                                              cwd=root, stdout=log, stderr=log, env=env))
            if name == "dispatcher":
                wait_file(root / "var/dispatcher/address", 30)
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def write_json(path: Path, figures: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
