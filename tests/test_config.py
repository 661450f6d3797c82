"""Config validation: each problem is one ConfigError naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.common.config import Address, load_config, parse_address
from dispatcher.common.errors import ConfigError
from dispatcher.common.names import Arch

GOOD = """
[dispatcher]
listen = "127.0.0.1:7341"
heartbeat_timeout = 10
[observer]
poll_interval = 5
[runner]
arch = "auto"
[[repos]]
name = "demo"
url = "git/demo.git"
branches = ["main", "release/1.x"]
architectures = ["amd64", "aarch64"]
test_command = "make check"
timeout = 600
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "polyarch.toml"
    path.write_text(text)
    return path


def test_a_complete_config_loads_with_resolved_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    repo = config.repos[0]
    assert repo.architectures == (Arch.AMD64, Arch.ARM64)  # aarch64 normalised
    assert repo.url == str(tmp_path / "git/demo.git")  # relative to the config file
    assert config.dispatcher.listen == Address("127.0.0.1", 7341)
    assert config.dispatcher.state_dir == tmp_path / "var/dispatcher"
    assert config.runner.arch is None and config.observer.poll_interval == 5.0


def test_the_shipped_example_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "examples" / "polyarch.toml")
    assert config.repos


def test_the_example_units_may_write_every_path_the_example_config_writes() -> None:
    """Under the units' ProtectSystem=, only ReadWritePaths are writable: a state or
    secret beside the config in /etc would stop the dispatcher at its first start."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    config = load_config(examples / "polyarch.toml")
    written = {"dispatcher": [config.dispatcher.state_dir, config.dispatcher.results_dir,
                              config.dispatcher.token_file],
               "observer": [config.observer.state_dir], "runner": [config.runner.work_dir]}
    for daemon, paths in written.items():
        unit = (examples / "systemd" / f"polyarch-{daemon}.service").read_text()
        writable = [Path(p) for line in unit.splitlines() if line.startswith("ReadWritePaths=")
                    for p in line.split("=", 1)[1].split()]
        assert writable, f"polyarch-{daemon}.service has no ReadWritePaths"
        for path in paths:
            assert any(path.is_relative_to(w) for w in writable), f"{daemon} writes {path}, outside {writable}"


@pytest.mark.parametrize("change, key, words", [
    (("[dispatcher]", "[dispatcher]\ncolour = 1"), "dispatcher.colour", "unknown key"),
    (('timeout = 600', 'timout = 600'), "repos[0].timout", "unknown key (did you mean `timeout`?)"),
    (('poll_interval = 5', 'poll_intervall = 5'), "observer.poll_intervall",
     "unknown key (did you mean `poll_interval`?)"),
    (('[[repos]]', '[[repo]]'), "repo", "unknown key (did you mean `repos`?)"),
    (('heartbeat_timeout = 10', 'heartbeat_timeout = "10"'), "dispatcher.heartbeat_timeout", "expected an integer or a number, got '10'"),
    (('heartbeat_timeout = 10', 'heartbeat_timeout = -1'), "dispatcher.heartbeat_timeout", "greater than 0"),
    (('listen = "127.0.0.1:7341"', 'listen = "localhost"'), "dispatcher.listen", "'localhost'"),
    (('listen = "127.0.0.1:7341"', 'listen = "127.0.0.1:99999"'), "dispatcher.listen", "port '99999'"),
    (('"amd64", "aarch64"', '"amd64", "vax"'), "repos[0].architectures", "unknown architecture 'vax'"),
    (('url = "git/demo.git"\n', ''), "repos[0].url", "missing"),
    (('name = "demo"', 'name = "../etc"'), "repos[0].name", "invalid repo name '../etc'"),
    (('"main", "release/1.x"', '"main", "x;rm -rf"'), "repos[0].branches", "invalid branch pattern 'x;rm -rf'"),
    (('arch = "auto"', 'arch = "pdp11"'), "runner.arch", "unknown architecture 'pdp11'"),
    (('arch = "auto"', 'arch = "auto"\npass_env = ["OK", "1BAD"]'), "runner.pass_env",
     "'1BAD' is not an environment variable name"),
    (('timeout = 600', 'timeout = true'), "repos[0].timeout", "got True"),
    (('timeout = 600', 'timeout = 600\nretry_failed = -1'), "repos[0].retry_failed", "must be 0 or more"),
    (('timeout = 600', 'timeout = 600\non_failure = " "'), "repos[0].on_failure", "must not be empty"),
    (('timeout = 600', 'timeout = 600\nhook_timeout = 0'), "repos[0].hook_timeout", "greater than 0"),
    (('timeout = 600', 'timeout = 600\non_commit_done = ""'), "repos[0].on_commit_done", "must not be empty"),
    (('listen = "127.0.0.1:7341"', 'listen = "127.0.0.1:7341"\npublic_url = "ci.example.org"'),
     "dispatcher.public_url", "not an http:// or https:// URL"),
    (('listen = "127.0.0.1:7341"', 'listen = "127.0.0.1:7341"\nhttp_listen = "7342"'), "dispatcher.http_listen",
     "'7342'"),
    (('arch = "auto"', 'arch = "auto"\njob_user = "Root Admin"'), "runner.job_user", "is not a user name"),
    (('arch = "auto"', 'arch = "auto"\nshare = ["/"]'), "runner.share", "sharing / would give jobs everything"),
    (('arch = "auto"', 'arch = "auto"\njob_memory = "2X"'), "runner.job_memory", "'2X' is not a size"),
    (('arch = "auto"', 'arch = "auto"\njob_pids = 0'), "runner.job_pids", "greater than 0"),
    (('arch = "auto"', 'arch = "auto"\ncache_limit = -5'), "runner.cache_limit", "-5 is not a size"),
    (('timeout = 600', 'timeout = 600\nsetup_key = ["../secrets"]'), "repos[0].setup_key", "leaves the checkout"),
    (('timeout = 600', 'timeout = 600\nsetup = ""'), "repos[0].setup", "must not be empty"),
    (('[runner]', '[arch.arm64]\npackages = ["gcc; reboot"]\n[runner]'), "arch.arm64.packages",
     "is not a Debian package name"),
    (('[runner]', '[dispatcher.runners.r1]\narchitectures = ["vax"]\n[runner]'),
     "dispatcher.runners.r1.architectures", "unknown architecture 'vax'"),
])
def test_each_mistake_names_file_key_and_value(tmp_path: Path, change, key: str, words: str) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert words in text
    assert "\n" not in text


def test_timeout_factor_per_arch(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + "\n[arch.aarch64]\ntimeout_factor = 4\n"))
    assert config.timeout_factor(Arch.ARM64, emulated=True) == 4.0
    assert config.timeout_factor(Arch.AMD64, emulated=False) == 1.0
    assert config.timeout_factor(Arch.RISCV64, emulated=True) == 20.0  # the measured default
    with pytest.raises(ConfigError, match=r"arch.vax: unknown architecture"):
        load_config(write(tmp_path, GOOD + "\n[arch.vax]\ntimeout_factor = 4\n"))
    with pytest.raises(ConfigError, match=r"arch.arm64.speed: unknown key"):
        load_config(write(tmp_path, GOOD + "\n[arch.arm64]\nspeed = 4\n"))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[dispatcher\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_duplicate_repo_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"repos\[1\].name: duplicate"):
        load_config(write(tmp_path, GOOD + GOOD[GOOD.index("[[repos]]"):]))


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7341", Address("127.0.0.1", 7341)),
    ("[::1]:80", Address("::1", 80)),
    ("lab-host.example:0", Address("lab-host.example", 0)),
])
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "7341", "host:", "host:port", "::1:80", "[::1]80"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
