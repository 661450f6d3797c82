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
    """branch -> commit for refs/heads/*."""
    prefix = "refs/heads/"
    return {ref[len(prefix):]: sha for ref, sha in read_refs(git_dir, (prefix,)).items()}


def read_refs(git_dir: Path, prefixes: tuple[str, ...]) -> dict[str, str]:
    """full ref name -> object id for the refs under `prefixes` (each ending in "/"):
    packed-refs first, loose ref files override.

    Raises OSError if the folder cannot be read; a ref file caught mid-write (empty or
    partial) raises RefsUnclear, and the caller falls back to asking git."""
    refs: dict[str, str] = {}
    try:
        packed = (git_dir / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        packed = ""
    for line in packed.splitlines():
        if not line or line[0] in "#^":
            continue
        sha, _, ref = line.partition(" ")
        if ref.startswith(prefixes) and _is_sha(sha):
            refs[ref] = sha
    for prefix in prefixes:
        root = git_dir / prefix
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    sha = path.read_text(encoding="utf-8", errors="replace").strip()
                except (FileNotFoundError, IsADirectoryError):
                    continue
                if _is_sha(sha):
                    refs[prefix + path.relative_to(root).as_posix()] = sha
                elif not name.endswith(".lock"):
                    raise RefsUnclear(f"{path}: not an object id")
    return refs


class RefsUnclear(Exception):
    """A ref file did not hold a plain commit id (symbolic, or caught mid-write)."""
