"""The one TOML config shared by the three daemons, validated once at start.

Every problem becomes a ConfigError naming the file, the key and the value. Relative
paths are resolved against the config file's folder, so a unit's working directory
does not change what a config means.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from dispatcher.common.errors import ConfigError, InvalidName, UnknownRepo
from dispatcher.common.sections import Section, read_toml
from dispatcher.common.branches import Watched
from dispatcher.common.branches import parse as parse_branches
from dispatcher.common.names import Arch, check_branch_pattern, check_repo, check_runner, host_arch, parse_arch

DEFAULT_PORT = 7341
# Measured (bench/emulation.py): a Python test suite under qemu-user arm64 takes about
# 16x its native time on this 2-core machine, interpreter start about 20x. Timeouts of
# emulated runners default to this factor, with that margin.
DEFAULT_EMULATED_FACTOR = 20.0


@dataclasses.dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        return self.host.startswith("127.") or self.host == "::1"


def parse_address(text: str) -> Address:
    """'host:port' or '[v6]:port' -> Address; ValueError with the reason otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected \"host:port\"")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("expected \"[v6address]:port\"")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("expected \"host:port\"")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return Address(host, int(port_text))


@dataclasses.dataclass(frozen=True)
class RunnerIdentity:
    """A runner the dispatcher knows by name ([dispatcher.runners.NAME]): its own secret,
    the architectures it may serve. Listing any makes the list the only runners allowed."""

    name: str
    token_file: Optional[Path] = None  # None: the shared secret
    architectures: tuple[Arch, ...] = ()  # empty: any


@dataclasses.dataclass(frozen=True)
class DispatcherConfig:
    listen: Address = Address("127.0.0.1", DEFAULT_PORT)
    state: str = "sqlite"  # or a postgresql:// URL (a database several dispatchers may share)
    state_dir: Path = Path("var/dispatcher")
    results_dir: Path = Path("test_results")
    heartbeat_timeout: float = 10.0
    max_attempts: int = 3
    token_file: Path = Path("var/secret")
    max_connections: int = 2048
    max_unauthenticated: int = 64
    idle_timeout: float = 120.0
    tls_cert: Optional[Path] = None  # with tls_key: TLS on
    tls_key: Optional[Path] = None
    tls_client_ca: Optional[Path] = None  # set: clients must show a certificate it signed
    http_listen: Optional[Address] = None  # the HTTP API; off unless set
    runners: tuple[RunnerIdentity, ...] = ()  # set: only these runners, each bound as it says
    live_log_limit: int = 4 * 1024 * 1024  # bytes of a running job's <arch>.log.part
    public_url: Optional[str] = None  # where test_results/ is served: hooks link to its pages


def parse_addresses(value: object) -> tuple[Address, ...]:
    """One "host:port", or a list of them (the dispatchers a client may use, in order)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("the list names no dispatcher")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected \"host:port\" or a list of them, got {item!r}")
        out.append(parse_address(item))
    return tuple(out)


LOCAL_DISPATCHER = (Address("127.0.0.1", DEFAULT_PORT),)


@dataclasses.dataclass(frozen=True)
class ObserverConfig:
    dispatchers: tuple[Address, ...] = LOCAL_DISPATCHER  # tried in order; the one that answered is kept
    poll_interval: float = 5.0
    state_dir: Path = Path("var/observer")
    max_backfill: int = 100
    watch: bool = True
    fetch_timeout: float = 120.0
    token_file: Path | None = None
    tls_ca: Optional[Path] = None  # set: connect with TLS, trusting this CA
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    dispatchers: tuple[Address, ...] = LOCAL_DISPATCHER
    work_dir: Path = Path("var/runner")
    arch: Arch | None = None  # None = "auto": this process's own machine
    name: str | None = None
    log_limit: int = 4 * 1024 * 1024
    kill_grace: float = 5.0
    stop_grace: float = 20.0
    fetch_timeout: float = 120.0  # each git fetch of a job's repository, before it is abandoned
    pass_env: tuple[str, ...] = ()  # the runner's environment variables a job also gets
    job_user: str = "polyarch-job"  # who jobs run as, when the runner runs as root
    share: tuple[Path, ...] = ()  # folders every job may read and write (a compiler cache)
    job_memory: Optional[int] = None  # bytes a job's processes may use together; over it, killed
    job_pids: Optional[int] = None  # processes a job may have at once
    cache_limit: int = 10 << 30  # bytes of cached setups kept; the least recently used go first
    job_tty: bool = True  # a job's output goes to a pseudo-terminal (line-buffered), else a pipe
    token_file: Path | None = None
    tls_ca: Optional[Path] = None
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class RepoConfig:
    name: str
    url: str
    branches: tuple[str, ...] = ("main",)
    architectures: tuple[Arch, ...] = (Arch.AMD64,)
    test_command: str = "python -m pytest -q"
    timeout: float = 600.0
    retry_failed: int = 0  # a failed job runs again up to this often; a later pass is "flaky"
    setup: Optional[str] = None  # run once per (arch, root, setup_key contents); its folder is cached
    setup_key: tuple[str, ...] = ()  # file globs, relative to the checkout, that key the setup
    on_queued: Optional[str] = None  # shell command run when a commit's jobs are queued
    on_result: Optional[str] = None  # ... after every final result
    on_failure: Optional[str] = None  # ... after every final result that is not a pass
    on_commit_done: Optional[str] = None  # ... once every architecture of a commit is final
    hook_timeout: float = 60.0

    @property
    def watched(self) -> tuple[Watched, ...]:
        """`branches` as what they match (names, glob patterns, full ref patterns)."""
        return parse_branches(self.branches)

    @property
    def default_branch(self) -> str:
        """The branch a commit submitted by hand is recorded on: the first one `branches`
        names plainly ("" when every entry is a pattern)."""
        return next((b for b in self.branches if "*" not in b and "?" not in b), "")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    timeout_factor: Optional[float] = None  # None: 1 native, DEFAULT_EMULATED_FACTOR emulated
    rootfs: Optional[Path] = None  # the root this architecture's runners use here (serve --arch A)
    packages: tuple[str, ...] = ()  # Debian packages `rootfs build` puts in that root


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path
    dispatcher: DispatcherConfig
    observer: ObserverConfig
    runner: RunnerConfig
    repos: tuple[RepoConfig, ...]
    archs: dict[Arch, ArchConfig] = dataclasses.field(default_factory=dict)

    def timeout_factor(self, arch: Arch, emulated: bool) -> float:
        configured = self.archs.get(arch, ArchConfig()).timeout_factor
        if configured is not None:
            return configured
        return DEFAULT_EMULATED_FACTOR if emulated else 1.0

    def require_repo(self, name: str) -> "RepoConfig":
        """The repo of that name; UnknownRepo names the known ones (InvalidName for a bad name)."""
        repo = self.repo(check_repo(name))
        if repo is None:
            known = ", ".join(r.name for r in self.repos) or "none"
            raise UnknownRepo(f"unknown repo {name!r}; known: {known} (in {self.path})")
        return repo

    def repo(self, name: str) -> RepoConfig | None:
        return next((r for r in self.repos if r.name == name), None)

    def token_for(self, section: str) -> Path:
        """The shared-secret file a client section uses: its own, else the dispatcher's."""
        own = getattr(self, section).token_file
        return own if own is not None else self.dispatcher.token_file


def load_config(path: str | Path) -> Config:
    """Read and validate the config file; raises ConfigError naming file, key and value."""
    path = Path(path).expanduser().absolute()
    top = Section(path, "", read_toml(path, what="config"))
    disp = _dispatcher(path, top.get("dispatcher", dict, {}))
    obs = _observer(path, top.get("observer", dict, {}))
    run = _runner(path, top.get("runner", dict, {}))
    repos_raw = top.get("repos", list, [])
    repos = tuple(_repo(path, i, r) for i, r in enumerate(repos_raw))
    archs = _archs(path, top.get("arch", dict, {}))
    seen: set[str] = set()
    for i, repo in enumerate(repos):
        if repo.name in seen:
            raise ConfigError(path, f"repos[{i}].name", f"duplicate repo name {repo.name!r}")
        seen.add(repo.name)
    top.done()
    return Config(path, disp, obs, run, repos, archs)


def _archs(path: Path, table: dict) -> dict[Arch, ArchConfig]:
    out: dict[Arch, ArchConfig] = {}
    for name, section in table.items():
        try:
            arch = parse_arch(name)
        except InvalidName as exc:
            raise ConfigError(path, f"arch.{name}", str(exc)) from None
        s = Section(path, f"arch.{name}", section)
        factor = s.get("timeout_factor", (int, float), None)
        if factor is not None and factor <= 0:
            raise s.fail("timeout_factor", f"must be greater than 0, got {factor!r}")
        rootfs = s.path_("rootfs", None)
        packages = tuple(s.checked("packages", p, check_package) for p in s.get("packages", list, []))
        s.done()
        out[arch] = ArchConfig(None if factor is None else float(factor), rootfs, packages)
    return out


def check_package(name: object) -> str:
    # Debian policy's package names, so nothing else reaches apt's command line.
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
        raise InvalidName(f"{name!r} is not a Debian package name")
    return name


def _dispatcher(path: Path, table: Any) -> DispatcherConfig:
    s = Section(path, "dispatcher", table)
    d = DispatcherConfig()
    cfg = DispatcherConfig(
        listen=s.parsed("listen", parse_address, d.listen),
        state=s.parsed("state", check_state, d.state),
        state_dir=s.path_("state_dir", d.state_dir),
        results_dir=s.path_("results_dir", d.results_dir),
        heartbeat_timeout=s.positive("heartbeat_timeout", d.heartbeat_timeout),
        max_attempts=s.positive("max_attempts", d.max_attempts, integer=True),
        token_file=s.path_("token_file", d.token_file),
        max_connections=s.positive("max_connections", d.max_connections, integer=True),
        max_unauthenticated=s.positive("max_unauthenticated", d.max_unauthenticated, integer=True),
        idle_timeout=s.positive("idle_timeout", d.idle_timeout),
        tls_cert=s.path_("tls_cert", None),
        tls_key=s.path_("tls_key", None),
        tls_client_ca=s.path_("tls_client_ca", None),
        http_listen=s.parsed("http_listen", parse_address, None),
        runners=_runner_identities(path, s.get("runners", dict, {})),
        live_log_limit=s.positive("live_log_limit", d.live_log_limit, integer=True),
        public_url=s.parsed("public_url", check_public_url, None),
    )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise s.fail("tls_cert", "tls_cert and tls_key go together")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise s.fail("tls_client_ca", "needs tls_cert and tls_key")
    s.done()
    return cfg


def _runner_identities(path: Path, table: dict) -> tuple[RunnerIdentity, ...]:
    out = []
    for name, entry in table.items():
        key = f"dispatcher.runners.{name}"
        try:
            check_runner(name)
        except InvalidName as exc:
            raise ConfigError(path, key, str(exc)) from None
        if not isinstance(entry, dict):
            raise ConfigError(path, key, "expected a table (token_file, architectures)")
        s = Section(path, key, entry)
        archs = tuple(s.checked("architectures", a, parse_arch) for a in s.get("architectures", list, []))
        out.append(RunnerIdentity(name, s.path_("token_file", None), archs))
        s.done()
    return tuple(out)


def _observer(path: Path, table: Any) -> ObserverConfig:
    s = Section(path, "observer", table)
    d = ObserverConfig()
    cfg = ObserverConfig(
        dispatchers=_dispatchers(s, d.dispatchers),
        poll_interval=s.positive("poll_interval", d.poll_interval),
        state_dir=s.path_("state_dir", d.state_dir),
        max_backfill=s.positive("max_backfill", d.max_backfill, integer=True),
        watch=s.get("watch", bool, d.watch),
        fetch_timeout=s.positive("fetch_timeout", d.fetch_timeout),
        token_file=s.path_("token_file", None),
        **_client_tls(s),
    )
    s.done()
    return cfg


def _client_tls(s: Section) -> dict[str, Optional[Path]]:
    tls = {"tls_ca": s.path_("tls_ca", None), "tls_cert": s.path_("tls_cert", None),
           "tls_key": s.path_("tls_key", None)}
    if (tls["tls_cert"] is None) != (tls["tls_key"] is None):
        raise s.fail("tls_cert", "tls_cert and tls_key go together")
    if tls["tls_cert"] is not None and tls["tls_ca"] is None:
        raise s.fail("tls_ca", "a client certificate needs tls_ca (the CA that signed the dispatcher's)")
    return tls


def _env_name(name: object) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InvalidName(f"{name!r} is not an environment variable name")
    return name


def _user_name(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name):
        raise InvalidName(f"{name!r} is not a user name (lower-case letters, digits, _ and -)")
    return name


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(value: object) -> Optional[int]:
    """Bytes from 1073741824, "1G", "512M" or "512MiB" (powers of 1024); None stays None."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
    if isinstance(value, bool) or not match or int(match.group(1)) <= 0:
        raise InvalidName(f"{value!r} is not a size: write bytes, or a number with K, M, G or T (\"2G\")")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def _share_path(base: Path, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{value!r} is not a folder path")
    path = (base / Path(value).expanduser()).absolute()
    if path == Path("/"):
        raise InvalidName("sharing / would give jobs everything; name the folders they need")
    return path


def _runner(path: Path, table: Any) -> RunnerConfig:
    s = Section(path, "runner", table)
    d = RunnerConfig()
    arch_text = s.get("arch", str, "auto")
    arch = None if arch_text == "auto" else s.checked("arch", arch_text, parse_arch)
    name = s.get("name", str, None)
    cfg = RunnerConfig(
        dispatchers=_dispatchers(s, d.dispatchers),
        work_dir=s.path_("work_dir", d.work_dir),
        arch=arch,
        name=None if name is None else s.checked("name", name, check_runner),
        log_limit=s.positive("log_limit", d.log_limit, integer=True),
        kill_grace=s.positive("kill_grace", d.kill_grace),
        stop_grace=s.positive("stop_grace", d.stop_grace),
        fetch_timeout=s.positive("fetch_timeout", d.fetch_timeout),
        pass_env=tuple(s.checked("pass_env", n, _env_name) for n in s.get("pass_env", list, [])),
        job_user=s.checked("job_user", s.get("job_user", str, d.job_user), _user_name),
        share=tuple(s.checked("share", p, lambda p: _share_path(s.base, p)) for p in s.get("share", list, [])),
        job_memory=s.checked("job_memory", s.get("job_memory", (int, str), None), _size),
        job_pids=s.positive("job_pids", 1, integer=True) if "job_pids" in s.table else None,
        cache_limit=s.checked("cache_limit", s.get("cache_limit", (int, str), d.cache_limit), _size),
        job_tty=s.get("job_tty", bool, d.job_tty),
        token_file=s.path_("token_file", None),
        **_client_tls(s),
    )
    s.done()
    return cfg


def _repo(path: Path, index: int, table: Any) -> RepoConfig:
    s = Section(path, f"repos[{index}]", table)
    raw_name = s.get("name", str, None)
    if raw_name is None:
        raise s.fail("name", "missing: every [[repos]] needs a name")
    name = s.checked("name", raw_name, check_repo)
    url = s.get("url", str, None)
    if not url:
        raise s.fail("url", "missing: the repository's path, file://, ssh:// or https:// URL")
    branches = s.get("branches", list, ["main"])
    if not branches:
        raise s.fail("branches", "must name at least one branch")
    for b in branches:
        s.checked("branches", b, check_branch_pattern)
    archs_raw = s.get("architectures", list, [host_arch().value])
    if not archs_raw:
        raise s.fail("architectures", "must name at least one architecture")
    archs: list[Arch] = []
    for a in archs_raw:
        arch = s.checked("architectures", a, parse_arch)
        if arch not in archs:
            archs.append(arch)
    d = RepoConfig(name="x", url="x")
    test_command = s.get("test_command", str, d.test_command)
    if not test_command.strip():
        raise s.fail("test_command", "must not be empty")
    cfg = RepoConfig(
        name=name,
        url=_resolve_url(url, path.parent),
        branches=tuple(branches),
        architectures=tuple(archs),
        test_command=test_command,
        timeout=s.positive("timeout", d.timeout),
        retry_failed=_non_negative(s, "retry_failed", d.retry_failed),
        setup=s.command("setup"),
        setup_key=tuple(s.checked("setup_key", g, check_key_glob) for g in s.get("setup_key", list, [])),
        on_queued=_command(s, "on_queued"),
        on_result=_command(s, "on_result"),
        on_failure=_command(s, "on_failure"),
        on_commit_done=_command(s, "on_commit_done"),
        hook_timeout=s.positive("hook_timeout", d.hook_timeout),
    )
    s.done()
    return cfg


def check_key_glob(value: object) -> str:
    """A setup_key entry: a glob inside the checkout (`requirements*.txt`, `**/pyproject.toml`)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidName(f"{value!r} is not a file glob")
    if value.startswith("/") or ".." in Path(value).parts:
        raise InvalidName(f"{value!r} leaves the checkout: give a glob relative to the repository's root")
    return value


def check_state(value: str) -> str:
    """"sqlite" (the file in state_dir), or a PostgreSQL URL naming a database."""
    if value == "sqlite":
        return value
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError('give "sqlite" or a postgresql://user@host/database URL')
    if parts.path.strip("/") == "":
        raise ValueError("the URL names no database (postgresql://user@host/DATABASE)")
    return value


def check_public_url(value: str) -> str:
    """An http(s) URL with a host, kept without its trailing slash."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("not an http:// or https:// URL (give the address test_results/ is served at)")
    return value.rstrip("/")


def _non_negative(s: Section, name: str, default: int) -> int:
    value = s.get(name, int, default)
    if value < 0:
        raise s.fail(name, f"must be 0 or more, got {value!r}")
    return value


def _command(s: Section, name: str) -> Optional[str]:
    value = s.get(name, str, None)
    if value is not None and not value.strip():
        raise s.fail(name, "must not be empty (leave the key out for no hook)")
    return value


def _resolve_url(url: str, base: Path) -> str:
    """A relative local path is relative to the config file, like every other path."""
    if "://" in url or url.startswith("/") or ("@" in url and ":" in url):
        return url
    return str((base / url).absolute())


def address_file(config: Config) -> Path:
    """Where a running dispatcher records the address it really listens on."""
    return config.dispatcher.state_dir / "address"


def write_address_file(config: Config, address: str) -> None:
    from dispatcher.common.files import atomic_write

    atomic_write(address_file(config), (address + "\n").encode())


def _dispatchers(s: Section, default: tuple[Address, ...]) -> tuple[Address, ...]:
    value = s.get("dispatcher", (str, list), None)
    if value is None:
        return default
    try:
        return parse_addresses(value)
    except ValueError as exc:
        raise s.fail("dispatcher", str(exc)) from None


def dispatcher_addresses(config: Config, section: str) -> list[Address]:
    """The addresses a client section may connect to, in the config's order."""
    return [_resolved(config, section, addr) for addr in getattr(config, section).dispatchers]


def _resolved(config: Config, section: str, addr: Address) -> Address:
    """Port 0 means "the dispatcher on this machine, wherever it listens": the dispatcher
    (configured with port 0 too) picks a free port and records it in its state_dir."""
    if addr.port != 0:
        return addr
    path = address_file(config)
    try:
        return parse_address(path.read_text().strip())
    except FileNotFoundError:
        raise ConfigError(config.path, f"{section}.dispatcher",
                          f"port 0 but {path} does not exist: is the dispatcher running?") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(config.path, f"{section}.dispatcher", f"cannot read {path}: {exc}") from None


def default_runner_name(arch: Arch) -> str:
    return check_runner(f"{socket.gethostname().split('.')[0] or 'runner'}-{arch.value}")
