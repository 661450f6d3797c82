"""Atomic file writes: the only way polyarch writes a file that someone else reads."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
from pathlib import Path

TMP_PREFIX = ".polyarch-tmp-"
# A write slower than this is said in the log: a reader meanwhile sees the old file and
# a `.polyarch-tmp-*` beside it, which an operator should be able to explain.
SLOW_WRITE_SECONDS = 2.0

log = logging.getLogger("polyarch.files")


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half.

    Temporary file in the same folder (same file system, so rename is atomic), fsync of
    the file, rename, fsync of the folder so the rename itself survives a power cut: a
    Batch of one file. `durable=False` skips both fsyncs, for files that need only
    outlive a process, not the machine; a reader still never sees half a file.
    """
    batch = Batch(durable)
    batch.write(path, data, mode=mode)
    batch.commit()


class Batch:
    """Many atomic writes made durable together: each file is written to a temporary
    beside it, and `commit` fsyncs every temporary, then renames them `step` by step
    (lowest first), fsyncing each folder once per step. A reader sees a step's files only
    after every file of the steps before it is in place and durable, as if each had been
    written by `atomic_write` in that order; a crash leaves temporaries, never half a
    file. With results arriving faster than one fsync per file and per folder allows
    (a hundred a second: 3 files and 3 folder fsyncs each), this is what keeps the files
    up with them: the folder fsyncs are shared by every file of a step in that folder.
    """

    def __init__(self, durable: bool = True) -> None:
        self.durable = durable  # False: no fsync at all (files that need only outlive a process)
        self._staged: dict[tuple[int, Path], tuple[str, int]] = {}  # (step, path) -> (temporary, mode)
        self._removed: dict[int, list[Path]] = {}  # step -> files to delete in it

    def write(self, path: Path, data: bytes, step: int = 0, mode: int = 0o644) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        earlier = self._staged.pop((step, path), None)  # written twice (a summary): the last counts
        if earlier is not None:
            os.unlink(earlier[0])
        self._staged[(step, path)] = (tmp, mode)

    def remove(self, path: Path, step: int = 0) -> None:
        self._removed.setdefault(step, []).append(Path(path))

    def commit(self) -> None:
        began = time.monotonic()
        written = [path for _, path in self._staged]
        try:
            for tmp, _mode in self._staged.values() if self.durable else ():
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for step in sorted({s for s, _ in self._staged} | set(self._removed)):
                folders = set()
                for gone in self._removed.get(step, ()):
                    gone.unlink(missing_ok=True)
                    folders.add(gone.parent)
                for (s, path), (tmp, mode) in list(self._staged.items()):
                    if s == step:
                        os.chmod(tmp, mode)
                        os.replace(tmp, path)
                        del self._staged[(s, path)]
                        folders.add(path.parent)
                for folder in sorted(folders) if self.durable else ():
                    fsync_dir(folder)
        finally:
            self.abort()
        took = time.monotonic() - began
        if took > SLOW_WRITE_SECONDS:
            # A reader meanwhile saw the old files and `.polyarch-tmp-*` beside them.
            log.warning("writing %s took %.1f s: the disk is slow", ", ".join(sorted(map(str, written))), took)

    def abort(self) -> None:
        """Drop what is not renamed yet."""
        for tmp, _mode in self._staged.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._staged.clear()
        self._removed.clear()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporaries a crash left under `root`; returns how many were removed."""
    removed = 0
    if not Path(root).is_dir():
        return 0
    for tmp in Path(root).rglob(TMP_PREFIX + "*"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else b"" (missing, too big, a
    FIFO, a device, a symlink): for files a job may have replaced to trap its reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return b""
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_from(path: Path, offset: int, most: int) -> bytes:
    """Up to `most` bytes of a regular file from `offset` (b"" when missing or not a
    regular file): a result's log, read by a follower piece by piece."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.pread(fd, most, offset)
    finally:
        os.close(fd)
