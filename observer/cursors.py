"""Per-branch cursors: the last commit of each branch the dispatcher acknowledged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from dispatcher.common.errors import StateError
from dispatcher.common.files import atomic_write


class Cursors:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, str]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not all(
                        isinstance(v, dict) and all(isinstance(s, str) for s in v.values()) for v in data.values()):
                    raise ValueError("expected {repo: {branch: sha}}")
            except (OSError, ValueError) as exc:
                # Never reset silently: that would skip or re-test commits.
                raise StateError(f"{path}: unreadable cursor file ({exc}); restore it, or delete it to start "
                                 "again from each branch's head (commits since the last run are then skipped)") from None
            self._data = data

    def get(self, repo: str, branch: str) -> Optional[str]:
        return self._data.get(repo, {}).get(branch)

    def branches(self, repo: str) -> list[str]:
        return list(self._data.get(repo, {}))

    def set(self, repo: str, branch: str, sha: str) -> None:
        self._data.setdefault(repo, {})[branch] = sha
        self._save()

    def drop(self, repo: str, branch: str) -> None:
        if self._data.get(repo, {}).pop(branch, None) is not None:
            self._save()

    def _save(self) -> None:
        atomic_write(self.path, (json.dumps(self._data, indent=1, sort_keys=True) + "\n").encode())
