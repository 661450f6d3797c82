"""The cost of emulation: the same test suite natively and on arm64 under qemu-user.

    .venv/bin/python -m bench.emulation [--rootfs /var/cache/polyarch/rootfs-arm64] [--runs 5]

Runs a small real unittest suite (parsing, hashing, sorting, big integers: what test
suites spend their time on) with the host's python3 and with the arm64 root's python3
under chroot, and a bare interpreter start both ways. Prints medians (min-max) and the
emulated/native ratios; writes them as JSON. Needs root (chroot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Debian's own Python 3.11 on both sides: the same version and build, only the CPU differs.
NATIVE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"

SUITE = '''\
import hashlib, json, random, re, unittest


class Workload(unittest.TestCase):
    def test_json_round_trips(self):
        data = [{"id": i, "name": f"item{i}", "tags": ["a", "b"] * 3} for i in range(3000)]
        for _ in range(5):
            self.assertEqual(json.loads(json.dumps(data)), data)

    def test_hashing(self):
        blob = bytes(range(256)) * 4000
        for _ in range(20):
            hashlib.sha256(blob).hexdigest()

    def test_sorting(self):
        rng = random.Random(1)
        items = [rng.random() for _ in range(100000)]
        self.assertEqual(sorted(items)[0], min(items))

    def test_regex(self):
        text = "key=value; " * 20000
        self.assertEqual(len(re.findall(r"(\\w+)=(\\w+)", text)), 20000)

    def test_big_integers(self):
        self.assertEqual(pow(3, 20000) % 7, pow(3, 20000 % 6, 7))
'''


def _time(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def _fig(samples: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, default=Path(os.environ.get("POLYARCH_ROOTFS_ARM64",
                                                                            "/var/cache/polyarch/rootfs-arm64")))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "emulation.json")
    args = parser.parse_args()
    if not (args.rootfs / "usr/bin/python3").exists():
        raise SystemExit(f"bench: no root at {args.rootfs}; run: polyarch-runner rootfs build --arch arm64 DIR")
    inside = Path("tmp/polyarch-bench")
    folder = args.rootfs / inside
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_workload.py").write_text(SUITE)
    native_dir = ROOT / "bench" / "results" / "suite"
    native_dir.mkdir(parents=True, exist_ok=True)
    (native_dir / "test_workload.py").write_text(SUITE)
    try:
        cases = {
            "interpreter start": ([NATIVE_PYTHON, "-c", "pass"],
                                  ["chroot", str(args.rootfs), "python3", "-c", "pass"]),
            "unittest suite": ([NATIVE_PYTHON, "-m", "unittest", "discover", "-q", "-s", str(native_dir)],
                               ["chroot", str(args.rootfs), "python3", "-m", "unittest", "discover", "-q", "-s",
                                f"/{inside}"]),
        }
        report = {}
        print(f"emulation cost, arm64 under qemu-user vs native amd64, {args.runs} runs each:")
        for name, (native_cmd, emulated_cmd) in cases.items():
            native, emulated = _fig(_time(native_cmd, args.runs)), _fig(_time(emulated_cmd, args.runs))
            ratio = emulated["median_s"] / native["median_s"]
            report[name] = {"native": native, "emulated": emulated, "ratio": ratio}
            print(f"  {name:18} native {native['median_s']:.3f} s ({native['min_s']:.3f}-{native['max_s']:.3f})"
                  f"   arm64 {emulated['median_s']:.3f} s ({emulated['min_s']:.3f}-{emulated['max_s']:.3f})"
                  f"   ratio {ratio:.1f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
