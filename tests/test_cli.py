"""The three commands as a user runs them: help, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, Polyarch, skip_unless_ci, wait_for

COMMANDS = [("dispatcher", ()), ("dispatcher", ("serve",)), ("dispatcher", ("status",)), ("dispatcher", ("submit",)),
            ("observer", ()), ("observer", ("serve",)), ("observer", ("once",)), ("runner", ()), ("runner", ("serve",))]


@pytest.mark.parametrize("package, args", COMMANDS)
def test_every_command_has_help(polyarch: Polyarch, package: str, args: tuple[str, ...]) -> None:
    out = polyarch.cli(package, *args, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout


@pytest.mark.parametrize("package, args", [("dispatcher", ("serve",)), ("observer", ("serve",)),
                                           ("runner", ("serve",)), ("dispatcher", ("status",))])
def test_bad_config_is_one_line_and_exit_2(polyarch: Polyarch, package: str, args: tuple[str, ...]) -> None:
    polyarch.config.write_text(polyarch.config.read_text().replace('architectures = ["amd64"]',
                                                                   'architectures = ["amd64", "m68k"]'))
    out = polyarch.cli(package, *args, "--config", str(polyarch.config))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"{polyarch.config}: repos[0].architectures: unknown architecture 'm68k'" in lines[0]


def test_runner_refuses_an_architecture_it_is_not(polyarch: Polyarch) -> None:
    out = polyarch.cli("runner", "serve", "--config", str(polyarch.config), "--arch", "s390x")
    assert out.returncode == 2 and "s390x is not this machine's architecture" in out.stderr


def test_submit_queues_once_and_status_shows_it(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    cfg = ("--config", str(polyarch.config))
    first = polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", sha)
    assert first.returncode == 0 and "1 job(s) queued" in first.stdout, first.stderr
    again = polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", sha)
    assert again.returncode == 0 and "already known" in again.stdout
    unknown = polyarch.cli("dispatcher", "submit", *cfg, "--repo", "nope", "--commit", sha)
    assert unknown.returncode == 2 and "unknown repo 'nope'" in unknown.stderr
    bad_sha = polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", "HEAD")
    assert bad_sha.returncode == 2 and "invalid commit 'HEAD'" in bad_sha.stderr
    status = polyarch.cli("dispatcher", "status", *cfg, "--json")
    data = json.loads(status.stdout)
    assert data["commits"][0]["architectures"]["amd64"]["state"] == "queued"
    table = polyarch.cli("dispatcher", "status", *cfg)
    assert table.returncode == 0 and sha[:10] in table.stdout and "queued" in table.stdout
    [active] = data["active"]
    assert (active["commit"], active["state"], active["runner"]) == (sha, "queued", "")
    # Unknown names are refused in one line, exit 2, naming what is known.
    for args, words in ((("--repo", "nope"), "unknown repo 'nope'; known: demo"),
                        (("--commit", "0badc0de"), "no commit '0badc0de' in any repository"),
                        (("--repo", "demo", "--commit", "0badc0de"), "no commit '0badc0de' in repo demo")):
        out = polyarch.cli("dispatcher", "status", *cfg, *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and words in out.stderr, out.stderr
    gate = polyarch.cli("dispatcher", "wait", *cfg, "--repo", "nope", "--commit", sha, "--timeout", "5")
    assert gate.returncode == 2 and "known: demo" in gate.stderr, gate.stderr


def test_status_shows_runners_and_watch_redraws_until_interrupted(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("sleep 30")
    polyarch.dispatcher()
    polyarch.runner("r1")
    cfg = ("--config", str(polyarch.config))
    assert polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", sha).returncode == 0

    def running() -> dict:
        data = json.loads(polyarch.cli("dispatcher", "status", *cfg, "--json").stdout)
        return data if data["active"] and data["active"][0]["state"] == "running" and data["runners"] else {}

    data = wait_for(running, what="the job to run on r1")
    assert data["active"][0]["runner"] == "r1" and data["active"][0]["elapsed"] >= 0
    [runner] = data["runners"]
    assert runner["name"] == "r1" and runner["connected"] is True and runner["emulated"] is False
    watch = subprocess.Popen([sys.executable, "-m", "dispatcher", "status", *cfg, "--watch", "--interval", "0.2"],
                             cwd=polyarch.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="160"))
    time.sleep(1.5)  # a few redraws; the condition checked is the output after Ctrl-C
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=20)
    assert watch.returncode == 0, err
    assert "recent commits" in out and "▶ running" in out and "connected" in out
    assert polyarch.cli("dispatcher", "status", *cfg, "--watch", "--json").returncode == 2


def test_status_without_a_database_or_a_dispatcher_says_so(polyarch: Polyarch) -> None:
    out = polyarch.cli("dispatcher", "status", "--config", str(polyarch.config))
    assert out.returncode == 2 and "is the dispatcher running?" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_status_from_another_host_asks_the_dispatcher(polyarch: Polyarch, tmp_path: Path) -> None:
    gate = polyarch.shared / "go"
    sha = polyarch.repo.commit(f"while [ ! -e {gate} ]; do sleep 0.05; done")
    polyarch.dispatcher()
    polyarch.runner("r1")
    cfg = ("--config", str(polyarch.config))
    assert polyarch.cli("dispatcher", "submit", *cfg, "--repo", "demo", "--commit", sha).returncode == 0
    # Another host: the dispatcher's address and the secret, no state database.
    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes((polyarch.root / "var/secret").read_bytes())
    (elsewhere / "secret").chmod(0o600)
    address = (polyarch.root / "var/dispatcher/address").read_text().strip()
    (elsewhere / "polyarch.toml").write_text(
        f'[dispatcher]\nstate_dir = "{elsewhere}/state"\ntoken_file = "{elsewhere}/secret"\n'
        f'[observer]\ndispatcher = "{address}"\n'
        f'[[repos]]\nname = "demo"\nurl = "{polyarch.repo.path}"\n')
    far = ("--config", str(elsewhere / "polyarch.toml"))

    def running(*args: str) -> dict:
        out = polyarch.cli("dispatcher", "status", *args, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        return data if data["active"] and data["active"][0]["state"] == "running" else {}

    def steady(data: dict) -> list:  # a running job's duration grows between two reads
        return [{**c, "architectures": {a: {k: v for k, v in cell.items() if k != "duration"}
                                        for a, cell in c["architectures"].items()}} for c in data["commits"]]

    remote = wait_for(lambda: running(*far), what="the job running, seen from elsewhere")
    local = running(*cfg)
    assert steady(remote) == steady(local) and remote["commits"][0]["commit"] == sha
    assert remote["active"][0]["runner"] == "r1" and [r["name"] for r in remote["runners"]] == ["r1"]
    assert steady(running(*cfg, "--remote")) == steady(local)
    table = polyarch.cli("dispatcher", "status", *far, "--commit", sha[:8])
    assert table.returncode == 0 and "▶ running" in table.stdout and sha[:10] in table.stdout
    unknown = polyarch.cli("dispatcher", "status", *far, "--commit", "0badc0de")
    assert unknown.returncode == 2 and "no commit '0badc0de'" in unknown.stderr
    gate.touch()
    polyarch.wait_results([sha])
    polyarch.daemons[0].stop()
    gone = polyarch.cli("dispatcher", "status", *far)
    assert gone.returncode == 1 and f"cannot reach the dispatcher at {address}" in gone.stderr, gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_corrupt_state_database_stops_the_dispatcher_with_one_line(polyarch: Polyarch) -> None:
    db = polyarch.root / "var/dispatcher/polyarch.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"\0garbage" * 1000)
    out = polyarch.cli("dispatcher", "serve", "--config", str(polyarch.config))
    assert out.returncode == 2
    assert f"{db}: unreadable state database" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_observer_once_reports_good_repos_and_names_the_unreachable_one(polyarch: Polyarch) -> None:
    polyarch.write_config(extra_repos=f'\n[[repos]]\nname = "gone"\nurl = "{polyarch.root}/does-not-exist"\n'
                                      'architectures = ["amd64"]\n')
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    out = polyarch.cli("observer", "once", "--config", str(polyarch.config))
    assert out.returncode == 1
    assert "gone: git fetch" in out.stderr and "does-not-exist" in out.stderr
    status = json.loads(polyarch.cli("dispatcher", "status", "--config", str(polyarch.config), "--json").stdout)
    assert [c["commit"] for c in status["commits"]] == [sha]


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        skip_unless_ci("systemd-analyze missing: apt-get install systemd")
    bin_dir = Path(sys.executable).parent
    units = sorted((ROOT / "examples" / "systemd").glob("*.service"))
    assert len(units) == 4
    for unit in units:
        script = bin_dir / unit.name.replace("@.service", "").replace(".service", "")
        assert script.exists(), f"{script} missing: install polyarch (bash scripts/setup.sh)"
        # Point ExecStart at this install's console scripts so verify can check them.
        text = unit.read_text().replace("/opt/polyarch/venv/bin/", f"{bin_dir}/")
        (tmp_path / unit.name).write_text(text)
    # A template is verified through an instance of it.
    names = [str(tmp_path / u.name).replace("@.service", "@arm64.service") for u in units]
    for unit in units:
        if "@" in unit.name:
            (tmp_path / unit.name.replace("@.service", "@arm64.service")).symlink_to(tmp_path / unit.name)
    out = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "polyarch" not in out.stderr, out.stderr


def test_off_loopback_the_dispatcher_refuses_to_start_without_a_secret(polyarch: Polyarch) -> None:
    polyarch.config.write_text(polyarch.config.read_text().replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"'))
    out = polyarch.cli("dispatcher", "serve", "--config", str(polyarch.config))
    assert out.returncode == 2
    assert "secret file missing" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (polyarch.root / "var/secret").exists()


def test_daemons_tell_systemd_they_are_ready(polyarch: Polyarch, tmp_path: Path) -> None:
    import os
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "serve", "--config", str(polyarch.config)],
                                cwd=polyarch.root, env=env, stderr=subprocess.DEVNULL)
        try:
            messages = [sock.recv(100) for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert b"READY=1" in messages
    assert b"WATCHDOG=1" in messages  # pinged at half of WatchdogSec
