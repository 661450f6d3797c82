"""Shared fixtures: real git repositories in tmp_path and real daemon processes."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from bench import rig

ROOT = Path(__file__).resolve().parent.parent
ROOTFS_ARM64 = Path(os.environ.get("POLYARCH_ROOTFS_ARM64", "/var/cache/polyarch/rootfs-arm64"))


def skip_unless_ci(reason: str) -> None:
    """Skip for a missing tool or privilege, naming the fix; under CI (CI=true) fail instead.

    CI installs everything (scripts/setup.sh) and runs as root, so a skip there would
    only hide that a test never ran."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"would skip under CI, where nothing may be missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL cluster for the session (bench/postgres.py), on a Unix
    socket only; each test that uses it gets a database of its own (`backend`)."""
    from bench.postgres import INSTALL, Cluster, binaries

    if binaries() is None:
        skip_unless_ci(f"PostgreSQL is not installed: {INSTALL}")
    cluster = Cluster().init().start()
    yield cluster
    cluster.close()


_databases = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path: Path) -> str:
    """The dispatcher.state value of each backend: "sqlite", or the URL of a fresh
    database in the session's PostgreSQL cluster. A test taking it runs on both."""
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"t{next(_databases)}")


def state_of(backend: str, tmp_path: Path):
    """Where a Store made directly by a test keeps the state of `backend`."""
    return tmp_path / "state.sqlite3" if backend == "sqlite" else backend


ROOTFS_I386 = Path(os.environ.get("POLYARCH_ROOTFS_I386", "/var/cache/polyarch/rootfs-i386"))
ROOTFS_S390X = Path(os.environ.get("POLYARCH_ROOTFS_S390X", "/var/cache/polyarch/rootfs-s390x"))


def require_root_of(arch_name: str, root: Path) -> None:
    """Skip (fail under CI) unless a runner can run in `root`, of `arch_name`, here."""
    from dispatcher.common.names import Arch
    from runner import binfmt

    if os.geteuid() != 0:
        skip_unless_ci("needs root for chroot and mounts: run bash scripts/test.sh as root")
    state = binfmt.support(Arch(arch_name))
    if not state.runnable:
        skip_unless_ci(f"{arch_name} {state.support.value}: apt-get install qemu-user-static && polyarch-runner binfmt")
    if not (root / "etc/polyarch-rootfs.json").exists():
        skip_unless_ci(f"no {arch_name} root at {root}: run bash scripts/test.sh as root (its setup builds one)")


def require_emulated_arm64() -> None:
    """Skip (fail under CI) unless an arm64 runner can run here under qemu-user."""
    from dispatcher.common.names import Arch
    from runner import binfmt

    if os.geteuid() != 0:
        skip_unless_ci("needs root for chroot and mounts: run bash scripts/test.sh as root")
    state = binfmt.support(Arch.ARM64)
    if not state.runnable:
        skip_unless_ci(f"arm64 {state.support.value}: apt-get install qemu-user-static && polyarch-runner binfmt")
    if not (ROOTFS_ARM64 / "etc/polyarch-rootfs.json").exists():
        skip_unless_ci(f"no arm64 root at {ROOTFS_ARM64}: run bash scripts/setup.sh as root (it builds one)")


def processes_running(*argv: str) -> list[int]:
    """Host pids of processes whose command line is exactly `argv`. A job's own `$$` and
    `$!` are pids in its PID namespace, meaningless outside it: a test that must see a job's
    process from here gives it a command line of its own (`sleep 300.17`) and looks for that."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == wanted:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "dev@example.invalid")
        self.git("config", "user.name", "Dev")
        self.counter = 0

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(self, test_script: str = "exit 0", message: Optional[str] = None,
               files: Optional[dict[str, str]] = None) -> str:
        """Commit with `test.sh` set to `test_script` (plus other files); returns the SHA."""
        self.counter += 1
        (self.path / "test.sh").write_text(test_script + "\n")
        (self.path / "counter").write_text(str(self.counter))
        for name, text in (files or {}).items():
            (self.path / name).write_text(text)
        self.git("add", "-A")
        # The message goes through a file: a huge one would not fit on a command line.
        subprocess.run(["git", "commit", "-q", "-F", "-"], cwd=self.path, check=True, capture_output=True,
                       input=(message or f"change {self.counter}").encode())
        return self.git("rev-parse", "HEAD")

    def burst(self, n: int, script: Callable[[int], str] = lambda i: "exit 0") -> list[str]:
        return [self.commit(script(i)) for i in range(n)]


class Daemon(rig.Daemon):
    """A polyarch daemon of a test's Polyarch: the shared harness (bench/rig.py), logging to
    a file named for it in the test's folder."""

    def __init__(self, env: "Polyarch", package: str, *args: str, name: str, prefix: tuple[str, ...] = ()) -> None:
        super().__init__(package, env.config, env.root, env.root / f"{name}.log", args, prefix)
        self.env, self.name = env, name

    def wait_ready(self, timeout: float = 20.0) -> None:
        try:
            super().wait_ready(timeout)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None


class Polyarch:
    """One config file, a repo, and the daemons started from them."""

    def __init__(self, root: Path, repo: GitRepo, state: str = "sqlite", **settings: object) -> None:
        self.root = root
        self.repo = repo
        self.state = state  # dispatcher.state: "sqlite", or a PostgreSQL database's URL
        self.daemons: list[Daemon] = []
        self.config = root / "polyarch.toml"
        # Jobs run as the job user, with a private /tmp: the folder where a test's commands
        # leave the markers this side waits for is shared with them (runner.share).
        self.shared = root / "shared"
        self.shared.mkdir(exist_ok=True)
        self.shared.chmod(0o777)
        self.write_config(**settings)

    def write_config(self, heartbeat_timeout: float = 2, max_attempts: int = 3, poll_interval: float = 0.5,
                     test_command: str = "sh test.sh", timeout: float = 30, archs: tuple[str, ...] = ("amd64",),
                     watch: bool = True, stop_grace: float = 20, extra_repos: str = "", repo_settings: str = "",
                     dispatcher_settings: str = "", runner_settings: str = "", listen: str = "127.0.0.1:0",
                     clients: str = '"127.0.0.1:0"') -> None:
        """The config; `repo_settings`, `dispatcher_settings` and `runner_settings` are TOML
        lines added to the demo repo's table, to [dispatcher] and to [runner]; `clients` is
        the TOML value of the observer's and the runner's `dispatcher`."""
        arch_list = ", ".join(f'"{a}"' for a in archs)
        # Only when it is not the default: the previous release's dispatcher (test_upgrade)
        # does not know the key.
        state_line = f'state = "{self.state}"' if self.state != "sqlite" else ""
        self.config.write_text(textwrap.dedent(f"""\
            [dispatcher]
            listen = "{listen}"
            {state_line}
            heartbeat_timeout = {heartbeat_timeout}
            max_attempts = {max_attempts}
            {dispatcher_settings}

            [observer]
            dispatcher = {clients}
            poll_interval = {poll_interval}
            watch = {str(watch).lower()}

            [runner]
            dispatcher = {clients}
            kill_grace = 1
            stop_grace = {stop_grace}
            share = ["{self.shared}"]
            {runner_settings}

            [[repos]]
            name = "demo"
            url = "{self.repo.path}"
            architectures = [{arch_list}]
            test_command = "{test_command}"
            timeout = {timeout}
            {repo_settings}
            """) + extra_repos)

    @property
    def results(self) -> Path:
        return self.root / "test_results"

    def dispatcher(self) -> Daemon:
        d = Daemon(self, "dispatcher", name=f"dispatcher{len(self.daemons)}").start()
        self.daemons.append(d)
        d.wait_ready()  # READY=1 comes after the address file is written
        return d

    def runner(self, name: str = "r1", *args: str, prefix: tuple[str, ...] = ()) -> Daemon:
        d = Daemon(self, "runner", "--name", name, *args, name=f"runner-{name}-{len(self.daemons)}",
                   prefix=prefix).start()
        self.daemons.append(d)
        return d

    def observer(self) -> Daemon:
        d = Daemon(self, "observer", name=f"observer{len(self.daemons)}").start()
        self.daemons.append(d)
        return d

    def result(self, sha: str, arch: str = "amd64") -> Optional[dict]:
        path = self.results / "demo" / sha / f"{arch}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_results(self, shas: list[str], arch: str = "amd64", timeout: float = 60) -> dict[str, dict]:
        wait_for(lambda: all(self.result(s, arch) for s in shas), timeout,
                 what=f"results for {len(shas)} commit(s); have "
                      f"{sum(1 for s in shas if self.result(s, arch))}")
        return {s: self.result(s, arch) for s in shas}  # type: ignore[misc]

    def cli(self, package: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", package, *args], cwd=self.root, capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    def close(self) -> None:
        for d in self.daemons:
            d.close()


@contextlib.contextmanager
def dispatcher_in_thread(config_path: Path):
    """The dispatcher's server in this process (real socket, real SQLite), for protocol tests."""
    from dispatcher.wire.auth import load_secret
    from dispatcher.common.config import Address, load_config
    from dispatcher.hub.server import DispatcherServer, state_location, policy_of
    from dispatcher.hub.store import Store

    config = load_config(config_path)
    store = Store(state_location(config), policy_of(config))
    srv = DispatcherServer(config, store, load_secret(config.dispatcher.token_file, create=True))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.address = Address(*srv.server_address[:2])
    try:
        yield srv
    finally:
        srv.stop()
        srv.shutdown()
        srv.server_close()
        store.close()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "upstream")


@pytest.fixture
def polyarch(request, tmp_path: Path, repo: GitRepo):
    """The daemons' environment; a test that also takes `backend` runs on SQLite and on
    PostgreSQL."""
    state = request.getfixturevalue("backend") if "backend" in request.fixturenames else "sqlite"
    env = Polyarch(tmp_path, repo, state=state)
    yield env
    env.close()
