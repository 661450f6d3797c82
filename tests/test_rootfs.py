"""Roots of other architectures: imported from a tarball, listed from the config, and built
with mmdebstrap past a secondary suite whose index fails."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from conftest import ROOT, ROOTFS_ARM64, require_emulated_arm64, skip_unless_ci
from runner.rootfs import packages_digest, read_info

pytestmark = pytest.mark.daemons


def runner_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _tiny_root(tmp_path: Path, shell: Path) -> Path:
    """A tarball holding only a real /bin/sh (from a root of that architecture)."""
    tarball = tmp_path / "root.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(shell.resolve(), arcname="bin/dash")
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "dash"
        tar.addfile(info)
    return tarball


def test_a_tarball_is_imported_after_its_architecture_is_checked(tmp_path: Path) -> None:
    require_emulated_arm64()  # root, and an arm64 binary to put in the tarball
    tarball = _tiny_root(tmp_path, ROOTFS_ARM64 / "bin/dash")
    wrong = runner_cli("rootfs", "import", "--arch", "s390x", str(tarball), str(tmp_path / "s390x"))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().endswith(f"{tarball} holds a root of arm64, not s390x (judged by its /bin/sh)")
    assert not (tmp_path / "s390x").exists() and not (tmp_path / "s390x.partial").exists()
    done = runner_cli("rootfs", "import", "--arch", "arm64", str(tarball), str(tmp_path / "arm64"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'arm64'}: arm64 root (imported from root.tar.gz)"
    # The config names it; `rootfs list` says it is usable, and names what is not.
    config = tmp_path / "polyarch.toml"
    config.write_text(f'[arch.arm64]\nrootfs = "{tmp_path / "arm64"}"\n[arch.s390x]\nrootfs = "{tmp_path / "none"}"\n')
    listed = runner_cli("rootfs", "list", "--config", str(config))
    assert listed.returncode == 1
    lines = listed.stdout.splitlines()
    assert lines[0] == f"arm64    {tmp_path / 'arm64'}  ok, imported from root.tar.gz"
    assert lines[1].startswith(f"s390x    {tmp_path / 'none'}  {tmp_path / 'none'} is not a polyarch root")


class _Missing(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.timeout(600)
def test_a_secondary_suite_whose_index_fails_is_left_out_with_a_warning(tmp_path: Path) -> None:
    """The security mirror answers 404 for everything (as a mirror caught mid-sync fails):
    the build tries it twice, then builds from the main suite and says what it left out."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        skip_unless_ci("needs root and mmdebstrap: run bash scripts/test.sh as root")
    empty = tmp_path / "empty"
    empty.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Missing, directory=str(empty)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = runner_cli("rootfs", "build", "--arch", "i386", "--security-mirror",
                         f"http://127.0.0.1:{server.server_address[1]}", str(tmp_path / "i386"))
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the index of bookworm-security failed" in out.stderr and "trying again" in out.stderr
    assert "leaving bookworm-security out of the i386 root: its index failed 2 times" in out.stderr
    assert "apt-get upgrade" in out.stderr
    assert (tmp_path / "i386/etc/debian_version").exists() and not (tmp_path / "i386.partial").exists()
    # The lab's packages, on the root that exists: what is missing is installed, the root
    # records what it was asked for and a new digest of what it holds.
    before = read_info(tmp_path / "i386")
    assert not (tmp_path / "i386/usr/bin/hello").exists()
    config = tmp_path / "polyarch.toml"
    config.write_text('[arch.i386]\npackages = ["hello"]\n')
    added = runner_cli("rootfs", "build", "--arch", "i386", "--config", str(config), str(tmp_path / "i386"))
    assert added.returncode == 0, added.stderr[-2000:]
    after = read_info(tmp_path / "i386")
    assert (tmp_path / "i386/usr/bin/hello").exists() and after.packages == ("hello",)
    assert after.digest == packages_digest(tmp_path / "i386") != before.digest
    bad = runner_cli("rootfs", "build", "--arch", "i386", "--include", "hello; reboot", str(tmp_path / "i386"))
    assert bad.returncode == 2 and "--include: 'hello; reboot' is not a Debian package name" in bad.stderr
