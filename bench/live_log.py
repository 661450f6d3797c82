"""A running job's lines, printed to read: `python -m bench.live_log`.

    .venv/bin/python -m bench.live_log [--lines N] [--rootfs DIR] [--json FILE]

The users' case: a test that prints a line a second with Python's plain `print` (no
flush), followed by `polyarch-dispatcher logs --follow` in its own process, through a real
dispatcher and runner (as root: the job runs jailed, as the job user; with --rootfs, in
that root, under qemu-user for another architecture). Each line carries the time it was
printed; the follower notes when it read it (one host, one clock). Prints the median,
90th percentile and worst delay, with runner.job_tty on and, for comparison, off (a
pipe: Python then holds every line until the job ends).
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

from bench.rig import ROOT, Daemon, git, new_repo, stop_all, write_json

JOB = ("python3 -c 'import time\\nfor i in range({lines}):\\n    print(\\\"tick\\\", repr(time.time()))\\n"
       "    time.sleep(1)'")


def measure(lines: int, tty: bool, rootfs: Path | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="polyarch-live-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        arch = "amd64" if rootfs is None else json.loads((rootfs / "etc/polyarch-rootfs.json").read_text())["arch"]
        config = root / "polyarch.toml"
        config.write_text(textwrap.dedent(f"""\
            [dispatcher]
            listen = "127.0.0.1:0"
            [observer]
            dispatcher = "127.0.0.1:0"
            [runner]
            dispatcher = "127.0.0.1:0"
            job_tty = {str(tty).lower()}
            [[repos]]
            name = "bench"
            url = "{repo}"
            architectures = ["{arch}"]
            test_command = "{JOB.format(lines=lines)}"
            timeout = {lines * 10 + 60}
            """))
        sha = git(repo, "rev-parse", "HEAD")
        started = [Daemon("dispatcher", config, root, root / "dispatcher.log").start()]
        try:
            started[0].wait_ready(30)
            args = ["--name", "r1"] + (["--rootfs", str(rootfs)] if rootfs else [])
            started.append(Daemon("runner", config, root, root / "runner.log", args).start())
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            cli = [sys.executable, "-m", "dispatcher"]
            subprocess.run([*cli, "submit", "--config", str(config), "--repo", "bench", "--commit", sha], cwd=root,
                           env=env, check=True, capture_output=True)
            follower = subprocess.Popen([*cli, "logs", "--config", str(config), "--repo", "bench", "--commit", sha,
                                         "--follow"], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
            assert follower.stdout is not None  # noqa: S101 - narrowing
            delays = []
            for line in follower.stdout:
                if line.startswith("tick "):
                    delays.append(time.time() - float(line.split()[1]))
            follower.wait(60)
        finally:
            stop_all(started)
    delays.sort()
    return {"arch": arch, "job_tty": tty, "lines": len(delays),
            "median_s": round(statistics.median(delays), 3) if delays else None,
            "p90_s": round(delays[int(len(delays) * 0.9) - 1], 3) if delays else None,
            "worst_s": round(delays[-1], 3) if delays else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20, help="lines the job prints, one a second")
    parser.add_argument("--rootfs", type=Path, help="run the job in this root (another architecture: qemu-user)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = {"tty": measure(args.lines, True, args.rootfs), "pipe": measure(min(args.lines, 5), False, args.rootfs)}
    for f in figures.values():
        print(f"{f['arch']} job_tty={'on ' if f['job_tty'] else 'off'}: {f['lines']} lines, delay from print to "
              f"follower median {f['median_s']} s, p90 {f['p90_s']} s, worst {f['worst_s']} s")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
