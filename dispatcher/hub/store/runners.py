"""The runners table: who registered, from where, and when each was last heard from."""

from __future__ import annotations

from dispatcher.hub.store.database import Database
from dispatcher.hub.store.rows import RunnerRow


class Runners:
    def __init__(self, db: Database) -> None:
        self._tx = db.tx

    def register(self, runner: RunnerRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO runners (name, arch, host, machine, version, emulated, kernel, first_seen, "
                       "last_seen, qemu, root) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "arch = excluded.arch, host = excluded.host, machine = excluded.machine, "
                       "version = excluded.version, emulated = excluded.emulated, kernel = excluded.kernel, "
                       "last_seen = excluded.last_seen, qemu = excluded.qemu, root = excluded.root",
                       (runner.name, runner.arch, runner.host, runner.machine, runner.version,
                        int(runner.emulated), runner.kernel, runner.first_seen, runner.last_seen, runner.qemu,
                        runner.root))

    def touch(self, seen: dict[str, float]) -> None:
        """Record when connected runners were last heard from, for `status` in other processes."""
        if seen:
            with self._tx() as db:
                db.executemany("UPDATE runners SET last_seen = ? WHERE name = ? AND last_seen < ?",
                               [(t, name, t) for name, t in seen.items()])
