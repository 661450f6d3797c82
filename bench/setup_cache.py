"""A real suite's dependencies, first job against cached: `python -m bench.setup_cache`.

    .venv/bin/python -m bench.setup_cache [--rootfs DIR] [--index DIR] [--json FILE]

As root. A repository whose tests import attrs and run under pytest; its `setup` makes a
venv in $POLYARCH_ENV and pip-installs `requirements.txt` from a local folder of wheels
(`--index`, default /opt/pypi/files: no network). The first commit runs the setup, the
next two reuse it. Runs on this machine and, with --rootfs, in that root (under qemu-user
for another architecture). Prints each job's duration from its result file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
from pathlib import Path

from bench.rig import ROOT, Daemon, git, new_repo, stop_all, wait_file, write_json

TEST = textwrap.dedent("""\
    import attrs


    @attrs.define
    class Point:
        x: int
        y: int


    def test_points_compare():
        assert Point(1, 2) == Point(1, 2)
    """)


def measure(rootfs: Path | None, index: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="polyarch-setup-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        arch = "amd64"
        if rootfs is not None:
            arch = json.loads((rootfs / "etc/polyarch-rootfs.json").read_text())["arch"]
        config = root / "polyarch.toml"
        setup = (f'python3 -m venv \\"$POLYARCH_ENV\\" && \\"$POLYARCH_ENV/bin/pip\\" install -q --no-index '
                 f'--find-links {index} -r requirements.txt')
        config.write_text(textwrap.dedent(f"""\
            [dispatcher]
            listen = "127.0.0.1:0"
            heartbeat_timeout = 60
            [observer]
            dispatcher = "127.0.0.1:0"
            [runner]
            dispatcher = "127.0.0.1:0"
            share = ["{index}"]
            [[repos]]
            name = "bench"
            url = "{repo}"
            architectures = ["{arch}"]
            setup = "{setup}"
            setup_key = ["requirements.txt"]
            test_command = "python -m pytest -q -p no:cacheprovider"
            timeout = 600
            """))
        (repo / "requirements.txt").write_text("pytest\nattrs\n")
        (repo / "test_points.py").write_text(TEST)
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "tests need attrs and pytest")
        shas = [git(repo, "rev-parse", "HEAD")]
        daemons = [Daemon("dispatcher", config, root, root / "dispatcher.log").start()]
        try:
            daemons[0].wait_ready(30)
            args = ["--name", "r1"] + (["--rootfs", str(rootfs)] if rootfs else [])
            daemons.append(Daemon("runner", config, root, root / "runner.log", args).start())
            daemons.append(Daemon("observer", config, root, root / "observer.log").start())
            results = root / "test_results" / "bench"
            out: dict[str, object] = {"arch": arch, "jobs": []}
            for i in range(3):
                if i:
                    git(repo, "commit", "-q", "--allow-empty", "-m", f"again {i}")
                    shas.append(git(repo, "rev-parse", "HEAD"))
                wait_file(results / shas[-1] / f"{arch}.json", 900)
                result = json.loads((results / shas[-1] / f"{arch}.json").read_text())
                log = (results / shas[-1] / f"{arch}.log").read_text()
                how = "setup ran" if "setup ran" in log else "setup reused" if "setup reused" in log else "?"
                out["jobs"].append({"status": result["status"], "duration_s": result["duration"], "setup": how})
                print(f"{arch} job {i + 1}: {result['status']}, {result['duration']:.2f} s ({how})", flush=True)
            return out
        finally:
            stop_all(daemons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", type=Path)
    parser.add_argument("--index", type=Path, default=Path("/opt/pypi/files"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "setup_cache.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench.setup_cache needs root (the jobs run isolated): run it as root")
    write_json(args.json, measure(args.rootfs, args.index))


if __name__ == "__main__":
    main()
