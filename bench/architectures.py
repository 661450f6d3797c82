"""All seven architectures, from root builds to jobs: the long run CI does not do.

    .venv/bin/python -m bench.architectures [--roots DIR] [--jobs 5] [--json FILE]

As root. Builds each missing root with `polyarch-runner rootfs build` (timed; a root
already there is reused and says so), then starts a dispatcher, a native runner, one
runner per root (`serve --rootfs`) and an observer, and pushes one commit whose test
prints what it sees of its machine (`uname -m`, byte order, pointer size; a
little-endian assumption fails on big-endian s390x alone), then `--jobs` commits of
`true`. Prints a table of each architecture's build time, what its job saw, and the
median job duration from the result files; writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.rig import ROOT, Daemon, git, new_repo, stop_all, wait_file, write_json

EMULATED = ("arm64", "armhf", "riscv64", "ppc64el", "s390x", "i386")
WHAT_AM_I = """python3 - <<'EOF'
import platform, struct, sys
print('machine', platform.machine(), sys.byteorder, struct.calcsize('P') * 8)
sys.exit(0 if struct.pack('=I', 1) == b'\\x01\\x00\\x00\\x00' else 1)
EOF
"""


def build_roots(folder: Path) -> dict[str, dict]:
    out = {}
    for arch in EMULATED:
        root = folder / f"rootfs-{arch}"
        if (root / "etc/polyarch-rootfs.json").exists():
            out[arch] = {"root": str(root), "build_s": None, "build": "cached"}
            continue
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "runner", "rootfs", "build", "--arch", arch, str(root)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        seconds = time.monotonic() - began
        ok = done.returncode == 0
        out[arch] = {"root": str(root), "build_s": round(seconds, 1),
                     "build": "built" if ok else f"failed: {done.stderr.strip().splitlines()[-1:]}"}
        print(f"{arch:8} root {'built' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    return out


def run_jobs(roots: dict[str, dict], jobs: int) -> dict[str, dict]:
    usable = [a for a, r in roots.items() if not r["build"].startswith("failed")]
    archs = ["amd64", *usable]
    with tempfile.TemporaryDirectory(prefix="polyarch-archs-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        config = write_config(root, repo, archs)
        daemons = [Daemon("dispatcher", config, root, root / "dispatcher.log").start()]
        try:
            daemons[0].wait_ready(30)
            daemons.append(Daemon("runner", config, root, root / "runner-amd64.log", ["--name", "amd64"]).start())
            for arch in usable:
                daemons.append(Daemon("runner", config, root, root / f"runner-{arch}.log",
                                      ["--name", arch, "--rootfs", roots[arch]["root"]]).start())
            daemons.append(Daemon("observer", config, root, root / "observer.log").start())
            results = root / "test_results" / "bench"
            # A branch's first sighting queues only its head: let the observer see the
            # starting commit (tested everywhere) before pushing the measured ones.
            start = git(repo, "rev-parse", "HEAD")
            for arch in archs:
                wait_file(results / start / f"{arch}.json", 900)
            (repo / "test.sh").write_text(WHAT_AM_I)
            git(repo, "add", "test.sh")
            git(repo, "commit", "-q", "-m", "what am I")
            first = git(repo, "rev-parse", "HEAD")
            shas = []
            for i in range(jobs):
                (repo / "test.sh").write_text("true\n")
                git(repo, "commit", "-q", "--allow-empty", "-am", f"true {i}")
                shas.append(git(repo, "rev-parse", "HEAD"))
            out = {}
            for arch in archs:
                wait_file(results / first / f"{arch}.json", 900)
                seen = json.loads((results / first / f"{arch}.json").read_text())
                log = (results / first / f"{arch}.log").read_text()
                line = next((x for x in log.splitlines() if x.startswith("machine ")), "")
                durations = []
                for sha in shas:
                    wait_file(results / sha / f"{arch}.json", 900)
                    durations.append(json.loads((results / sha / f"{arch}.json").read_text())["duration"])
                out[arch] = {"status": seen["status"], "saw": line.removeprefix("machine "),
                             "emulated": seen["emulated"], "qemu": seen.get("qemu", ""),
                             "job_true_median_s": statistics.median(durations), "jobs": len(durations)}
            return out
        finally:
            stop_all(daemons)


def write_config(root: Path, repo: Path, archs: list[str]) -> Path:
    config = root / "polyarch.toml"
    listed = ", ".join(f'"{a}"' for a in archs)
    config.write_text(textwrap.dedent(f"""\
        [dispatcher]
        listen = "127.0.0.1:0"
        heartbeat_timeout = 30
        [observer]
        dispatcher = "127.0.0.1:0"
        [runner]
        dispatcher = "127.0.0.1:0"
        [[repos]]
        name = "bench"
        url = "{repo}"
        architectures = [{listed}]
        test_command = "sh test.sh"
        timeout = 60
        """))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roots", type=Path, default=Path(os.environ.get("POLYARCH_ROOTS", "/var/cache/polyarch")))
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "architectures.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.architectures needs root (roots, namespaces): run it as root")
    roots = build_roots(args.roots)
    jobs = run_jobs(roots, args.jobs)
    print(f"\n| architecture | root | job saw (machine, byte order, bits) | status | `true` job, median of {args.jobs} |")
    print("|---|---|---|---|---|")
    for arch in ["amd64", *EMULATED]:
        r, j = roots.get(arch, {"build": "native"}), jobs.get(arch)
        build = f"built in {r['build_s']:.0f} s" if r.get("build_s") and r["build"] == "built" else r["build"]
        if j is None:
            print(f"| {arch} | {build} | | | |")
            continue
        how = f", {j['qemu']}" if j["qemu"] else ""
        print(f"| {arch} | {build} | {j['saw']}{how} | {j['status']} | {j['job_true_median_s']:.3f} s |")
    write_json(args.json, {"roots": roots, "jobs": jobs})


if __name__ == "__main__":
    main()
