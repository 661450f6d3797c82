"""Results that are finished but not yet acknowledged, kept on disk until they are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dispatcher.errors import ProtocolError
from dispatcher.fsutil import atomic_write
from dispatcher.protocol import Result, Status


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, lease_id: str) -> Path:
        return self.folder / f"{lease_id}.json"

    def put(self, result: Result) -> None:
        atomic_write(self._path(result.lease_id), json.dumps(dataclasses.asdict(result)).encode())

    def remove(self, lease_id: str) -> None:
        self._path(lease_id).unlink(missing_ok=True)

    def pending(self) -> list[Result]:
        out = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                data = json.loads(path.read_text())
                data["status"] = Status(data["status"])
                out.append(Result(**data))
            except (ValueError, TypeError, KeyError) as exc:
                raise ProtocolError(f"{path}: unreadable spooled result ({exc}); move it aside") from None
        return out
