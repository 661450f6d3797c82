"""Results that are finished but not yet acknowledged, kept on disk until they are."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from dispatcher.common.files import atomic_write
from dispatcher.common.states import Reported
from dispatcher.wire.protocol import CommitInfo, Result

log = logging.getLogger("polyarch.runner")


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, lease_id: str) -> Path:
        return self.folder / f"{lease_id}.json"

    def put(self, result: Result) -> None:
        # Not fsynced: the spool is for a runner killed or cut off before the ack. After a
        # power cut the lease expires and the job runs again, which loses nothing.
        atomic_write(self._path(result.lease_id), json.dumps(dataclasses.asdict(result)).encode(), durable=False)

    def remove(self, lease_id: str) -> None:
        self._path(lease_id).unlink(missing_ok=True)

    def pending(self) -> list[Result]:
        out = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                data = json.loads(path.read_text())
                data["status"] = Reported(data["status"])
                if isinstance(data.get("commit_info"), dict):
                    data["commit_info"] = CommitInfo(**data["commit_info"])
                out.append(Result(**data))
            except (ValueError, TypeError, KeyError) as exc:
                # Left by a power cut mid-write (the file is not fsynced): its lease expires
                # and the job runs again, so set it aside rather than block every result after it.
                aside = path.with_suffix(".unreadable")
                path.replace(aside)
                log.warning("unreadable spooled result %s (%s); moved to %s", path, exc, aside.name)
        return out
