"""A private PostgreSQL cluster for the tests and benchmarks: Debian's initdb and pg_ctl
on a folder of our own, listening on a Unix socket in that folder only (no TCP port, so
nothing else on the machine can reach it, and two clusters never collide). Started and
stopped for real; `restart` is what a lab's PostgreSQL upgrade or crash looks like.

Debian's postgresql package provides the binaries (scripts/setup.sh installs it when
POLYARCH_WITH_POSTGRESQL is set, as scripts/test.sh does). initdb refuses to run as
root, so as root the cluster belongs to the package's `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

INSTALL = "apt-get install postgresql (or: POLYARCH_WITH_POSTGRESQL=1 bash scripts/setup.sh)"


def binaries() -> Optional[Path]:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self, folder: Optional[Path] = None) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError(f"PostgreSQL is not installed: {INSTALL}")
        self.bin = bin_dir
        # Under /tmp, not pytest's tmp_path: that one's parent is root's alone (0700), and
        # the server runs as `postgres` when we are root.
        self.folder = folder or Path(tempfile.mkdtemp(prefix="polyarch-pg-"))
        self.data = self.folder / "data"
        self.owner = pwd.getpwnam("postgres") if os.getuid() == 0 else None
        if self.owner is not None:
            os.chown(self.folder, self.owner.pw_uid, self.owner.pw_gid)
        self.log = self.folder / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str = "polyarch") -> str:
        user = self.owner.pw_name if self.owner is not None else pwd.getpwuid(os.getuid()).pw_name
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.owner is not None else []
        return subprocess.run([*prefix, *argv], check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> "Cluster":
        # trust: the socket's folder is the only way in, and it is ours (0700).
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-E", "UTF8", "--no-sync",
                  "--locale", "C.UTF-8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                       "max_connections = 200\nfsync = on\n")
        return self

    def start(self) -> "Cluster":
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                         "start", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{self.server_log()[-2000:]}")
        return self

    def create_database(self, name: str = "polyarch") -> str:
        self._run(str(self.bin / "createdb"), "-h", str(self.socket_dir), name)
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop("immediate")  # as a crash: no checkpoint, recovery from the WAL at start
        self.start()

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
