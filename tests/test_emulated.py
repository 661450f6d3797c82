"""An arm64 runner under qemu-user in a real Debian arm64 root file system.

The root is built once by `bash scripts/setup.sh` (as root) and cached outside the
clone, in $POLYARCH_ROOTFS_ARM64 (default /var/cache/polyarch/rootfs-arm64).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOTFS_ARM64, ROOTFS_I386, ROOTFS_S390X, Polyarch, require_emulated_arm64, require_root_of

ROOTFS = ROOTFS_ARM64

pytestmark = pytest.mark.daemons


@pytest.fixture(autouse=True)
def _emulation_possible() -> None:
    require_emulated_arm64()


# An x86-only assumption in the code under test: passes on amd64, fails on aarch64. The
# script leaves JUnit XML where polyarch asks ($POLYARCH_JUNIT): one portable test, one
# x86-only test.
X86_ONLY = """python3 - <<'EOF'
import os, platform, sys
m = platform.machine()
print('machine', m)
bad = '' if m == 'x86_64' else '<failure message="not x86"/>'
with open(os.environ['POLYARCH_JUNIT'], 'w') as f:
    f.write('<testsuite tests="2" failures="%d"><testcase classname="calc" name="test_add"/>'
            '<testcase classname="calc" name="test_x86">%s</testcase></testsuite>' % (bool(bad), bad))
sys.exit(1 if bad else 0)
EOF"""


@pytest.mark.timeout(300)
def test_x86_only_code_passes_natively_and_fails_on_emulated_arm64(polyarch: Polyarch) -> None:
    polyarch.write_config(archs=("amd64", "arm64"), heartbeat_timeout=20, timeout=60)
    sha = polyarch.repo.commit(X86_ONLY)
    polyarch.dispatcher()
    polyarch.runner("native")
    polyarch.runner("emulated", "--rootfs", str(ROOTFS))  # the root says arm64
    polyarch.observer()
    native = polyarch.wait_results([sha], "amd64", timeout=60)[sha]
    emulated = polyarch.wait_results([sha], "arm64", timeout=240)[sha]
    assert native["status"] == "passed" and native["emulated"] is False
    assert emulated["status"] == "failed", emulated
    assert emulated["runner_machine"] == "aarch64" and emulated["emulated"] is True
    assert emulated["qemu"].startswith("qemu-aarch64 7.") and native["qemu"] == ""
    assert re.fullmatch(r"arm64 bookworm [0-9a-f]{12}", emulated["root"]) and native["root"] == ""
    assert "machine aarch64" in (polyarch.results / "demo" / sha / "arm64.log").read_text()
    # <arch>.json is the commit point: once both exist, summary.json counts both.
    summary = json.loads((polyarch.results / "demo" / sha / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["arch_specific_failure"] is True and summary["failing_architectures"] == ["arm64"]
    # Per test: the counts on each side, and the one test that only fails on arm64, by name.
    assert native["tests"]["passed"] == 2 and emulated["tests"]["failed"] == 1
    assert emulated["failed_tests"] == ["calc::test_x86"]
    assert summary["arch_specific_tests"] == [{"test": "calc::test_x86", "failed_on": ["arm64"],
                                               "passed_on": ["amd64"]}]
    # The jail's mounts lived in the job's own namespace: none is visible on the host.
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(ROOTFS) not in mounts


def test_rootfs_errors_name_the_fixing_command(polyarch: Polyarch, tmp_path: Path) -> None:
    out = polyarch.cli("runner", "serve", "--config", str(polyarch.config), "--arch", "arm64",
                       "--rootfs", str(tmp_path / "nothing"))
    assert out.returncode == 2
    assert "polyarch-runner rootfs build --arch ARCH" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_root_serves_its_own_architecture_and_a_conflicting_arch_is_one_line(polyarch: Polyarch) -> None:
    require_emulated_arm64()
    out = polyarch.cli("runner", "serve", "--config", str(polyarch.config), "--arch", "s390x", "--rootfs", str(ROOTFS))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"polyarch-runner: error: --arch s390x conflicts with the root {ROOTFS}, whose "
                                  "architecture is arm64; leave --arch out (the root decides) or choose another root")



# What a job sees of its machine, and a little-endian assumption (a byte-order bug) that
# only a big-endian architecture catches.
WHAT_AM_I = """python3 - <<'EOF'
import platform, struct, sys
print('machine', platform.machine(), sys.byteorder, struct.calcsize('P') * 8)
sys.exit(0 if struct.pack('=I', 1) == b'\\x01\\x00\\x00\\x00' else 1)
EOF"""


@pytest.mark.timeout(300)
def test_each_architecture_sees_its_machine_byte_order_and_pointer_size(polyarch: Polyarch) -> None:
    """amd64 natively, i386 natively in the 32-bit personality, arm64 and s390x under
    qemu-user: each job sees what a real host of its architecture shows, and only s390x,
    big-endian, fails the little-endian assumption."""
    require_root_of("i386", ROOTFS_I386)
    require_root_of("s390x", ROOTFS_S390X)
    archs = ("amd64", "i386", "arm64", "s390x")
    polyarch.write_config(archs=archs, heartbeat_timeout=20, timeout=120)
    sha = polyarch.repo.commit(WHAT_AM_I)
    polyarch.dispatcher()
    polyarch.runner("native")
    for root in (ROOTFS_I386, ROOTFS_ARM64, ROOTFS_S390X):
        polyarch.runner(root.name, "--rootfs", str(root))
    polyarch.observer()
    seen = {}
    for arch in archs:
        result = polyarch.wait_results([sha], arch, timeout=240)[sha]
        log = (polyarch.results / "demo" / sha / f"{arch}.log").read_text()
        seen[arch] = (result["status"], result["runner_machine"], result["emulated"],
                      next(line for line in log.splitlines() if line.startswith("machine ")))
    assert seen == {
        "amd64": ("passed", "x86_64", False, "machine x86_64 little 64"),
        "i386": ("passed", "i686", False, "machine i686 little 32"),
        "arm64": ("passed", "aarch64", True, "machine aarch64 little 64"),
        "s390x": ("failed", "s390x", True, "machine s390x big 64"),
    }
    summary = json.loads((polyarch.results / "demo" / sha / "summary.json").read_text())
    assert summary["failing_architectures"] == ["s390x"] and summary["arch_specific_failure"] is True
