"""The cached setup of each repository: one folder per key, made once, reused by later jobs.

A repository's `setup` (a shell command) fills an empty folder, `$POLYARCH_ENV` (a venv,
a build of its dependencies). The folder is kept under the runner's work folder, keyed
by what would change its contents: the repository, the architecture, the root it ran in
(its package list's digest), the setup command itself and the contents of the files
`setup_key` names. Later jobs with the same key skip the setup and get the same folder,
read-only: a test cannot change what the next commit's test starts from.

A folder counts as made only once its `.done` stamp is written, after the setup
succeeded; anything else found at start or before a setup (a crash mid-setup, a failed
one) is deleted. The stamp's mtime is the folder's last use, for evicting the least
recently used folders past `runner.cache_limit`. A runner runs one job at a time, so one
setup per key at a time holds by construction; runners under other names keep their own
folders.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from dispatcher.common.files import read_regular

log = logging.getLogger("polyarch.runner")

KEY_FILE_LIMIT = 16 * 1024 * 1024
DONE = ".done"


def setup_key(repo: str, arch: str, root: str, setup: str, checkout: Path, globs: Iterable[str]) -> str:
    """The key of a setup: 24 hex digits of a hash over everything its folder depends on."""
    h = hashlib.sha256()
    for part in (repo, arch, root, setup):
        h.update(part.encode() + b"\0")
    for pattern in globs:
        h.update(b"glob\0" + pattern.encode() + b"\0")
        for path in sorted(checkout.glob(pattern)):
            if path.is_file() and not path.is_symlink():
                h.update(str(path.relative_to(checkout)).encode() + b"\0")
                h.update(hashlib.sha256(read_regular(path, KEY_FILE_LIMIT)).digest())
    return h.hexdigest()[:24]


class EnvCache:
    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit

    def path(self, key: str) -> Path:
        return self.folder / key

    def ready(self, key: str) -> Optional[Path]:
        """The folder made for `key` by an earlier setup, its use recorded; None if none."""
        stamp = self.folder / f"{key}{DONE}"
        if not stamp.exists() or not self.path(key).is_dir():
            return None
        stamp.touch()
        return self.path(key)

    def begin(self, key: str, owner: Optional[tuple[int, int]]) -> Path:
        """An empty folder for a setup to fill (given to the job user)."""
        self.discard(key)
        path = self.path(key)
        path.mkdir(parents=True)
        if owner is not None:
            os.chown(path, *owner)
        return path

    def done(self, key: str) -> None:
        (self.folder / f"{key}{DONE}").touch()
        self.evict(keep=key)

    def discard(self, key: str) -> None:
        (self.folder / f"{key}{DONE}").unlink(missing_ok=True)
        shutil.rmtree(self.path(key), ignore_errors=True)

    def clean_unfinished(self) -> None:
        """At start: folders without a stamp were left by a crash mid-setup."""
        if not self.folder.is_dir():
            return
        for child in self.folder.iterdir():
            if child.is_dir() and not (self.folder / f"{child.name}{DONE}").exists():
                log.info("removing the unfinished setup %s", child)
                shutil.rmtree(child, ignore_errors=True)

    def evict(self, keep: str) -> None:
        """Drop the least recently used folders until the cache fits in `limit`."""
        entries = []
        for stamp in self.folder.glob(f"*{DONE}"):
            key = stamp.name[: -len(DONE)]
            entries.append((stamp.stat().st_mtime, key, _size(self.path(key))))
        total = sum(size for _, _, size in entries)
        for _, key, size in sorted(entries):
            if total <= self.limit:
                break
            if key == keep:
                continue
            log.info("evicting the cached setup %s (%d MiB) to keep the cache under runner.cache_limit", key,
                     size >> 20)
            self.discard(key)
            total -= size


def _size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total
