"""Branch heads read straight from a git folder's files: no git process.

A poll cycle over many repositories with nothing new should cost next to nothing. For a
repository on a local path the observer compares the remote's heads with its mirror's,
both read here, and fetches only when they differ.
"""

from __future__ import annotations

import os
from pathlib import Path

_HEX = set("0123456789abcdef")


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and set(text) <= _HEX


def read_heads(git_dir: Path) -> dict[str, str]:
    """branch -> commit for refs/heads/*: packed-refs first, loose ref files override.

    Raises OSError if the folder cannot be read; a ref file caught mid-write (empty or
    partial) is skipped, and the caller falls back to asking git."""
    heads: dict[str, str] = {}
    try:
        packed = (git_dir / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        packed = ""
    for line in packed.splitlines():
        if not line or line[0] in "#^":
            continue
        sha, _, ref = line.partition(" ")
        if ref.startswith("refs/heads/") and _is_sha(sha):
            heads[ref[len("refs/heads/"):]] = sha
    root = git_dir / "refs" / "heads"
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            try:
                sha = path.read_text(encoding="utf-8", errors="replace").strip()
            except (FileNotFoundError, IsADirectoryError):
                continue
            branch = path.relative_to(root).as_posix()
            if _is_sha(sha):
                heads[branch] = sha
            elif not name.endswith(".lock"):
                raise RefsUnclear(f"{path}: not a commit id")
    return heads


class RefsUnclear(Exception):
    """A ref file did not hold a plain commit id (symbolic, or caught mid-write)."""
