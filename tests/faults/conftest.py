"""Fault-injection tests: the short version runs in CI, the long one via scripts/reliability.sh.

POLYARCH_FAULTS=long raises trial and input counts to the figures in docs/RELIABILITY.md.
POLYARCH_RELIABILITY_RECORD=FILE makes each test append what it checked (one JSON line)
for scripts/reliability.sh to turn into that table.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import skip_unless_ci

LONG = os.environ.get("POLYARCH_FAULTS") == "long"


def scale(short: int, long: int) -> int:
    """Trials or inputs for this run: `short` in CI, `long` for the reliability report."""
    return long if LONG else short


def record(kind: str, name: str, **figures: object) -> None:
    """Append what a test checked to the reliability record, when one is being made."""
    path = os.environ.get("POLYARCH_RELIABILITY_RECORD")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "name": name, **figures}, sort_keys=True) + "\n")


def needs_root(what: str) -> None:
    if os.geteuid() != 0:
        skip_unless_ci(f"{what} needs root (mounts a tmpfs): run bash scripts/test.sh as root, as CI does")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator:
    """Mount tmpfs file systems of a given size; all unmounted afterwards."""
    needs_root("a full-disk test")
    if shutil.which("mount") is None:
        skip_unless_ci("mount is missing: apt-get install mount")
    mounted: list[Path] = []

    def make(name: str, size_kib: int) -> Path:
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
                       check=True)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the file system under `folder` to the last byte; returns the filler file."""
    path = folder / name
    with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        for size in (1 << 16, 4096, 1):  # byte-sized writes at the end take the last block too
            chunk = b"\0" * size
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    return path


def state_value(root: Path, sql: str, *args: object) -> object:
    """One value from the dispatcher's state database, opened read-only beside it."""
    db = sqlite3.connect(f"file:{root / 'var/dispatcher/polyarch.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchone()[0]
    finally:
        db.close()
