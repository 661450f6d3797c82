"""A corrupt or unreadable state database or cursor file: one line naming it, exit 2, no reset."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import Polyarch
from faults.conftest import record

pytestmark = pytest.mark.daemons

DB = "var/dispatcher/polyarch.sqlite3"
CURSORS = "var/observer/cursors.json"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2 + 1])
    elif how == "header-smashed":
        path.write_bytes(b"\xff" * 100 + data[100:])
    elif how == "not-json":
        path.write_bytes(b"{\"demo\": {\"main\": ")
    elif how == "wrong-shape":
        path.write_bytes(b"[1, 2, 3]\n")
    elif how == "a-directory":
        path.unlink()
        path.mkdir()
    else:
        raise ValueError(how)


def _first_run(polyarch: Polyarch) -> str:
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    observer = polyarch.observer()
    polyarch.wait_results([sha])
    for d in polyarch.daemons:
        d.stop()
    assert "reported" in observer.log()
    return sha


@pytest.mark.parametrize("how", ["garbage", "truncated", "header-smashed", "a-directory"])
def test_damaged_state_database_stops_the_dispatcher_with_one_line(polyarch: Polyarch, how: str) -> None:
    _first_run(polyarch)
    db = polyarch.root / DB
    # Fold the WAL into the file first, so the damage hits every committed row.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    _damage(db, how)
    damaged = db.read_bytes() if db.is_file() else None
    proc = polyarch.cli("dispatcher", "serve", "--config", str(polyarch.config))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and str(db) in lines[0] and "restore it from a backup" in lines[0], proc.stderr
    # Never reset behind the user's back: the damaged file is left exactly as it was.
    assert (db.read_bytes() if db.is_file() else None) == damaged
    record("fault", f"state database {how} at start", trials=1, detected=1, silent_resets=0)


@pytest.mark.parametrize("how", ["not-json", "wrong-shape", "a-directory"])
def test_damaged_cursor_file_stops_the_observer_with_one_line(polyarch: Polyarch, how: str) -> None:
    _first_run(polyarch)
    cursors = polyarch.root / CURSORS
    assert cursors.exists()
    _damage(cursors, how)
    for command in ("serve", "once"):
        proc = polyarch.cli("observer", command, "--config", str(polyarch.config))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and str(cursors) in lines[0] and "restore it" in lines[0], proc.stderr
    assert cursors.is_dir() or cursors.read_bytes() != b""
    record("fault", f"observer cursor file {how} at start", trials=1, detected=1, silent_resets=0)


def test_unreadable_results_folder_is_named(polyarch: Polyarch) -> None:
    _first_run(polyarch)
    shutil.rmtree(polyarch.results)
    polyarch.results.write_text("not a folder")
    proc = polyarch.cli("dispatcher", "serve", "--config", str(polyarch.config))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(polyarch.results) in proc.stderr


def test_a_config_folder_the_dispatcher_cannot_write_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The example units see /etc read-only: a secret or state beside the config there
    must stop the dispatcher with the path and its setting, not a traceback that
    Restart=on-failure repeats forever."""
    import subprocess
    import sys

    from faults.conftest import needs_root

    needs_root("a read-only bind mount")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "polyarch.toml").write_text('[dispatcher]\nlisten = "127.0.0.1:0"\ntoken_file = "var/secret"\n'
                                       '[[repos]]\nname = "demo"\nurl = "/nonexistent"\n')
    subprocess.run(["mount", "--bind", str(etc), str(etc)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(etc)], check=True)
        out = subprocess.run([sys.executable, "-m", "dispatcher", "serve", "--config", str(etc / "polyarch.toml")],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    finally:
        subprocess.run(["umount", str(etc)], check=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"polyarch-dispatcher: error: {etc / 'polyarch.toml'}: dispatcher.token_file: "
                                  f"cannot write {etc / 'var'}: Read-only file system; point dispatcher.token_file "
                                  "at a writable place (under systemd: the unit's StateDirectory, /var/lib/polyarch)")
    record("state", "a config folder the dispatcher cannot write (read-only /etc)", exit_code=2)
