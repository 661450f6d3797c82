"""Observer cost: CPU seconds of one poll cycle over many repositories.

    .venv/bin/python -m bench.observer_cost [--repos 50 200 1000] [--branches 5] [--cycles 10] [--json FILE]

For each `--repos` count: makes that many local repositories with `--branches` branches
each, starts a real dispatcher, and runs the observer's poll cycle in this process:
first a cycle that mirrors everything, then `--cycles` cycles with nothing new, then
cycles with one new commit in one repository. CPU is this process's plus its children's
(git), from getrusage, so every git process the cycle spawns is counted. Memory is this
process's resident set after the cycles (the observer's state and Python; the dispatcher
runs apart), and what the observer added to it. Several counts show how each grows.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from bench.capacity import Dispatcher
from bench.rig import ROOT, write_json
from dispatcher.common.config import load_config
from observer.service import Observer


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _make_repo(path: Path, branches: int) -> None:
    path.mkdir(parents=True)
    stream = []
    for b in range(branches):
        name = "main" if b == 0 else f"branch{b}"
        stream.append(f"commit refs/heads/{name}\ncommitter B <b@example.invalid> 1700000000 +0000\n"
                      f"data 2\nc\nM 644 inline f\ndata 2\n{b}\n\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input="".join(stream).encode(), check=True)


def _commit(path: Path, branch: str, n: int) -> None:
    stream = (f"commit refs/heads/{branch}\ncommitter B <b@example.invalid> {1700000000 + n} +0000\n"
              f"data 4\nnew\nfrom refs/heads/{branch}^0\nM 644 inline g\ndata 3\n{n:02d}\n\n")
    subprocess.run(["git", "fast-import", "--quiet", "--force"], cwd=path, input=stream.encode(), check=True)


def _cycle(observer: Observer, repos: list) -> float:
    began = _cpu()
    assert observer.poll_once(repos)  # noqa: S101 - a benchmark that polled nothing measures nothing
    return _cpu() - began


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(repos: int, branches: int, cycles: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="polyarch-observer-cost-") as tmp:
        root = Path(tmp)
        names = [f"r{i:03d}" for i in range(repos)]
        branch_list = ", ".join(f'"{b}"' for b in ["main", *[f"branch{i}" for i in range(1, branches)]])
        blocks = []
        for name in names:
            _make_repo(root / "repos" / name, branches)
            blocks.append(textwrap.dedent(f"""\
                [[repos]]
                name = "{name}"
                url = "{root / 'repos' / name}"
                branches = [{branch_list}]
                test_command = "true"
                """))
        d = Dispatcher(root, heartbeat_timeout=30,
                       extra='[observer]\ndispatcher = "127.0.0.1:0"\nwatch = false\n\n' + "\n".join(blocks))
        try:
            config = load_config(root / "polyarch.toml")
            before = _rss_mib()
            observer = Observer(config)
            mine = [r for r in config.repos if r.name in names]  # not the capacity bench's own repo
            first = _cycle(observer, mine)
            idle = [_cycle(observer, mine) for _ in range(cycles)]
            new = []
            for i in range(cycles):
                _commit(root / "repos" / names[i % repos], "main", i)
                new.append(_cycle(observer, mine))
            rss = _rss_mib()
            if observer.conn is not None:
                observer.conn.close()
        finally:
            d.stop()
    idle.sort()
    new.sort()
    return {"repos": repos, "branches": branches, "cycles": cycles, "first_cycle_cpu_s": first,
            "idle_cpu_s_median": statistics.median(idle), "idle_cpu_s_min": idle[0], "idle_cpu_s_max": idle[-1],
            "one_new_cpu_s_median": statistics.median(new), "one_new_cpu_s_min": new[0],
            "one_new_cpu_s_max": new[-1], "rss_mib": rss, "observer_added_mib": rss - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, nargs="+", default=[50])
    parser.add_argument("--branches", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "observer_cost.json")
    args = parser.parse_args()
    figures = []
    for count in args.repos:
        started = time.monotonic()
        f = measure(count, args.branches, args.cycles)
        print(f"observer poll cycle, {f['repos']} repos x {f['branches']} branches, {f['cycles']} cycles each: "
              f"nothing new median {f['idle_cpu_s_median']:.3f} s CPU (min {f['idle_cpu_s_min']:.3f}, "
              f"max {f['idle_cpu_s_max']:.3f}); one new commit median {f['one_new_cpu_s_median']:.3f} s "
              f"(min {f['one_new_cpu_s_min']:.3f}, max {f['one_new_cpu_s_max']:.3f}); first cycle (mirroring) "
              f"{f['first_cycle_cpu_s']:.2f} s; RSS {f['rss_mib']:.0f} MiB ({f['observer_added_mib']:+.1f} for "
              f"the observer); {time.monotonic() - started:.0f} s in all", flush=True)
        figures.append(f)
    if len(figures) > 1:
        first, last = figures[0], figures[-1]
        grow = last["repos"] / first["repos"]
        print(f"from {first['repos']} to {last['repos']} repos ({grow:g}x): idle cycle CPU "
              f"{last['idle_cpu_s_median'] / first['idle_cpu_s_median']:.1f}x, memory added by the observer "
              f"{first['observer_added_mib']:.1f} -> {last['observer_added_mib']:.1f} MiB")
    write_json(args.json, figures[0] if len(figures) == 1 else {"sizes": figures})


if __name__ == "__main__":
    main()
