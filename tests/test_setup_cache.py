"""A repository's cached setup (issue 14): its tests need a third-party package, which the
setup installs into $POLYARCH_ENV once per key; natively and in an emulated arm64 root.
No internet: the package is a wheel made here and served from a folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import ROOTFS_ARM64, Polyarch, require_emulated_arm64

pytestmark = pytest.mark.daemons

SETUP = """set -e
python3 -m venv --without-pip "$POLYARCH_ENV"
site=$(ls -d "$POLYARCH_ENV"/lib/python3*)/site-packages
while read -r req; do python3 -m zipfile -e "%(wheels)s/${req%%%%==*}-${req##*==}-py3-none-any.whl" "$site"; done \\
  < requirements.txt
echo setup installed $(cat requirements.txt)
"""
TEST = """python -c 'import demo_dep; print("dep says", demo_dep.VALUE)'
touch "$POLYARCH_ENV/written-by-a-test" 2>&1 || echo "the cached setup is read-only to the test"
"""


def _wheel(folder: Path, version: str) -> None:
    """A real wheel of a pure-Python package (what pip would install), written by hand."""
    name = f"demo_dep-{version}"
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as whl:
        whl.writestr("demo_dep/__init__.py", f"VALUE = '{version}'\n")
        whl.writestr(f"{name}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: demo_dep\nVersion: {version}\n")
        whl.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{name}.dist-info/RECORD", "")


@pytest.mark.timeout(400)
def test_a_setup_runs_once_per_key_and_its_folder_is_reused_natively_and_emulated(polyarch: Polyarch) -> None:
    require_emulated_arm64()
    wheels = polyarch.shared / "wheels"
    wheels.mkdir()
    for version in ("1.0", "2.0"):
        _wheel(wheels, version)
    polyarch.write_config(archs=("amd64", "arm64"), heartbeat_timeout=20, timeout=120,
                          repo_settings='setup = "sh setup.sh"\nsetup_key = ["requirements.txt"]')
    setup = SETUP % {"wheels": wheels}
    first = polyarch.repo.commit(TEST, files={"setup.sh": setup, "requirements.txt": "demo_dep==1.0\n"})
    polyarch.dispatcher()
    polyarch.runner("native")
    polyarch.runner("emulated", "--rootfs", str(ROOTFS_ARM64))
    polyarch.observer()

    def run(sha: str) -> dict[str, tuple[dict, str]]:
        out = {}
        for arch in ("amd64", "arm64"):
            result = polyarch.wait_results([sha], arch, timeout=240)[sha]
            out[arch] = (result, (polyarch.results / "demo" / sha / f"{arch}.log").read_text())
        return out

    made = run(first)
    for result, log in made.values():
        assert result["status"] == "passed", log
        assert "[polyarch: setup ran (key " in log and "setup installed demo_dep==1.0" in log, log
        assert "dep says 1.0" in log and "the cached setup is read-only to the test" in log, log

    again = polyarch.repo.commit(TEST + "echo second\n")  # the key file is unchanged
    reused = run(again)
    for result, log in reused.values():
        assert result["status"] == "passed" and "[polyarch: setup reused (key " in log, log
        assert "setup installed" not in log and "dep says 1.0" in log, log

    bumped = polyarch.repo.commit(TEST, files={"requirements.txt": "demo_dep==2.0\n"})
    for result, log in run(bumped).values():
        assert result["status"] == "passed", log
        assert "[polyarch: setup ran (key " in log and "dep says 2.0" in log, log

    broken = polyarch.repo.commit(TEST, files={"requirements.txt": "demo_dep==3.0\n"})  # no such wheel
    for result, log in run(broken).values():
        assert result["status"] == "error", log
        assert result["reason"].startswith("setup failed (exit 1): "), result["reason"]
    missing = polyarch.repo.commit("no-such-test-runner --all", files={"requirements.txt": "demo_dep==1.0\n"})
    for result, _ in run(missing).values():
        assert result["status"] == "error" and result["reason"].startswith("command not found (exit 127): "), result
    summary = json.loads((polyarch.results / "demo" / broken / "summary.json").read_text())
    assert summary["arch_specific_failure"] is False
    # First and cached jobs, for the README: what the cache saves on each architecture.
    for arch in ("amd64", "arm64"):
        print(f"{arch}: first job {made[arch][0]['duration']:.2f} s, cached {reused[arch][0]['duration']:.2f} s")
