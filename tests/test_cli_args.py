"""The CLIs' argument plumbing, in-process with click's CliRunner: which arguments reach
each daemon's entry point (patched with a recorder, as uvicorn's tests patch main.run).
The daemons themselves are started for real elsewhere (test_cli, test_pipeline)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import dispatcher.cli
import observer.cli
import runner.cli
from dispatcher.common.names import Arch, host_arch


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "polyarch.toml"
    path.write_text(textwrap.dedent(f"""\
        [runner]
        name = "from-config"
        [[repos]]
        name = "demo"
        url = "{tmp_path}"
        architectures = ["amd64"]
        test_command = "true"
        """))
    return path


@pytest.fixture
def calls(monkeypatch) -> list:
    """Every entry point the CLIs call, recorded instead of run; logging left alone."""
    got: list = []
    import dispatcher.hub.daemon
    import observer.service
    import runner.service

    monkeypatch.setattr(dispatcher.hub.daemon, "serve", lambda cfg: got.append(("dispatcher", cfg)))
    monkeypatch.setattr(observer.service, "serve", lambda cfg: got.append(("observer", cfg)))
    monkeypatch.setattr(observer.service, "once", lambda cfg, progress=None: got.append(("once", cfg)) and False)
    monkeypatch.setattr(runner.service, "serve", lambda cfg, arch, name, root=None: got.append(("runner", cfg, arch, name, root)))
    for module in (dispatcher.cli, observer.cli, runner.cli):
        monkeypatch.setattr(module, "setup_logging", lambda verbose=False: got.append(("logging", verbose)))
    return got


def test_dispatcher_serve_gets_the_config_it_was_given(config: Path, calls: list) -> None:
    result = CliRunner().invoke(dispatcher.cli.main, ["serve", "--config", str(config), "-v"])
    assert result.exit_code == 0, result.output
    assert calls[0] == ("logging", True)
    assert calls[1][0] == "dispatcher" and calls[1][1].path == config


def test_the_config_comes_from_the_environment_when_not_given(config: Path, calls: list) -> None:
    result = CliRunner().invoke(observer.cli.main, ["serve"], env={"POLYARCH_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert calls[-1][0] == "observer" and calls[-1][1].path == config


def test_runner_serve_names_and_arch(config: Path, calls: list) -> None:
    result = CliRunner().invoke(runner.cli.main, ["serve", "--config", str(config), "--name", "lab-1"])
    assert result.exit_code == 0, result.output
    assert calls[-1][0] == "runner" and calls[-1][2] == host_arch() and calls[-1][3] == "lab-1"
    CliRunner().invoke(runner.cli.main, ["serve", "--config", str(config)])
    assert calls[-1][3] == "from-config"


def test_runner_serve_refuses_another_arch_without_a_root(config: Path, calls: list) -> None:
    other = Arch.S390X if host_arch() != Arch.S390X else Arch.AMD64
    result = CliRunner().invoke(runner.cli.main, ["serve", "--config", str(config), "--arch", other.value])
    assert result.exit_code == 2 and "a runner of another architecture needs --rootfs DIR" in result.output
    assert not [c for c in calls if c[0] == "runner"]


def test_runner_serve_refuses_a_bad_name_before_starting(config: Path, calls: list) -> None:
    result = CliRunner().invoke(runner.cli.main, ["serve", "--config", str(config), "--name", "a b;c"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not [c for c in calls if c[0] == "runner"]


def test_observer_once_exits_1_when_a_poll_failed(config: Path, calls: list) -> None:
    result = CliRunner().invoke(observer.cli.main, ["once", "--config", str(config)])
    assert result.exit_code == 1 and calls[-1][0] == "once"


def test_status_refuses_watch_with_json(config: Path, calls: list) -> None:
    result = CliRunner().invoke(dispatcher.cli.main, ["status", "--config", str(config), "--watch", "--json"])
    assert result.exit_code == 2 and "--watch and --json do not go together" in result.output
