"""Buildbot 4.3 on the same work: latency, overhead per build, a 20-commit burst.

    .venv/bin/python -m bench.buildbot [--commits 20] [--burst 20] [--repeat 3] [--json FILE]

The baseline for polyarch's figures. Buildbot is not a project dependency: the first run
makes a venv at bench/.buildbot and installs buildbot, buildbot-worker and buildbot-www
4.3 into it from PyPI (a minute or two). The setup is the one the issue names: a master
and one local worker on loopback, `GitPoller(pollInterval=1, pollAtLaunch=True)` on a
local repository, `SingleBranchScheduler(treeStableTimer=None)`, a builder with
`collapseRequests=False` running `Git(mode='incremental')` then `ShellCommand` of the
test command (`true`). Results are read from the REST API (`/api/v2/builds`), polled
every 25 ms; that granularity is part of each Buildbot figure (polyarch's are read from
files polled every 2 ms).

- latency: commit to the build seen complete, one commit at a time with random gaps
  (the same gaps as bench.latency's, same seed).
- overhead: build seen started to build seen complete, minus the command's own time.
- burst: N commits made on a side branch and merged into main at once (bench.burst's
  push), to the last of their N builds complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from bench.latency import summarise
from bench.rig import ROOT, command_seconds, git, new_repo, write_json

VENV = ROOT / "bench" / ".buildbot"
PACKAGES = ("buildbot==4.3.0", "buildbot-worker==4.3.0", "buildbot-www==4.3.0")
POLL = 0.025  # REST API polling period


class BuildbotUnavailable(Exception):
    """The Buildbot venv could not be made (no PyPI?)."""


def ensure_venv() -> Path:
    """bench/.buildbot with Buildbot 4.3 installed; returns its bin folder."""
    bin_dir = VENV / "bin"
    if (bin_dir / "buildbot").exists() and (bin_dir / "buildbot-worker").exists():
        return bin_dir
    print(f"installing {', '.join(PACKAGES)} into {VENV} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    done = subprocess.run([str(bin_dir / "pip"), "install", "-q", *PACKAGES], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildbotUnavailable(f"pip install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


MASTER_CFG = """\
from buildbot.plugins import changes, schedulers, steps, util, worker

c = BuildmasterConfig = {{}}
c["buildbotNetUsageData"] = None
c["title"] = "bench"
c["buildbotURL"] = "http://127.0.0.1:{www}/"
c["workers"] = [worker.Worker("w1", "bench-pass")]
c["protocols"] = {{"pb": {{"port": "tcp:{pb}:interface=127.0.0.1"}}}}
c["change_source"] = [changes.GitPoller(repourl={repo!r}, branches=["main"], pollInterval=1,
                                        pollAtLaunch=True, workdir="gitpoller-work")]
c["schedulers"] = [schedulers.SingleBranchScheduler(
    name="all", change_filter=util.ChangeFilter(branch="main"), treeStableTimer=None, builderNames=["test"])]
factory = util.BuildFactory()
factory.addStep(steps.Git(repourl={repo!r}, mode="incremental"))
factory.addStep(steps.ShellCommand(command=["sh", "-c", {command!r}]))
c["builders"] = [util.BuilderConfig(name="test", workernames=["w1"], factory=factory, collapseRequests=False)]
c["www"] = {{"port": "tcp:{www}:interface=127.0.0.1", "plugins": {{}}}}
c["db"] = {{"db_url": "sqlite:///state.sqlite"}}
"""


class Buildbot:
    """A running master and worker for one repository; `builds()` reads the REST API."""

    def __init__(self, bin_dir: Path, root: Path, repo: Path, command: str) -> None:
        self.bin_dir, self.root = bin_dir, root
        self.www = _free_port()
        pb = _free_port()
        master, worker = root / "master", root / "worker"
        env = self._env()
        subprocess.run([str(bin_dir / "buildbot"), "create-master", "-q", str(master)], check=True, env=env)
        (master / "master.cfg").write_text(MASTER_CFG.format(www=self.www, pb=pb, repo=str(repo), command=command))
        subprocess.run([str(bin_dir / "buildbot-worker"), "create-worker", "-q", str(worker),
                        f"127.0.0.1:{pb}", "w1", "bench-pass"], check=True, env=env)
        self.procs: list[subprocess.Popen[bytes]] = []
        for name, argv in (("master", [str(bin_dir / "buildbot"), "start", "--nodaemon", str(master)]),
                           ("worker", [str(bin_dir / "buildbot-worker"), "start", "--nodaemon", str(worker)])):
            with open(root / f"{name}.out", "wb") as out:
                self.procs.append(subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=root))
            if name == "master":
                self._wait(lambda: self._get("/api/v2/builders") is not None, 120, "the master's REST API")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        return env

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.www}{path}", timeout=5) as reply:  # noqa: S310
                return json.loads(reply.read())
        except OSError:
            return None

    @staticmethod
    def _wait(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench.buildbot: timed out waiting for {what}")
            time.sleep(POLL)

    def builds(self) -> list[dict[str, Any]]:
        reply = self._get("/api/v2/builds?property=got_revision")
        return reply["builds"] if reply else []

    def wait_builds(self, count: int, timeout: float = 300) -> dict[int, tuple[float, float]]:
        """Poll until `count` builds are complete; buildid -> (seen started, seen complete)."""
        seen: dict[int, list[float]] = {}
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            builds = self.builds()
            for build in builds:
                times = seen.setdefault(build["buildid"], [now, 0.0])
                if build["complete"] and not times[1]:
                    times[1] = now
            if sum(1 for times in seen.values() if times[1]) >= count:
                return {bid: (times[0], times[1]) for bid, times in seen.items()}
            if now > deadline:
                raise SystemExit(f"bench.buildbot: {count} builds not complete within {timeout} s; "
                                 f"see {self.root}/master/twistd.log")
            time.sleep(POLL)

    def check_passed(self) -> None:
        failed = [b for b in self.builds() if b["results"] != 0]
        if failed:
            raise SystemExit(f"bench.buildbot: {len(failed)} builds did not pass; see {self.root}/master/twistd.log")

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _running(bin_dir: Path, command: str) -> Iterator[tuple[Path, Path, Buildbot]]:
    with tempfile.TemporaryDirectory(prefix="polyarch-buildbot-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        bot = Buildbot(bin_dir, root, repo, command)
        try:
            # Warm-up: the poller's first look, the worker's connection and first clone.
            git(repo, "commit", "-q", "--allow-empty", "-m", "warm-up")
            bot.wait_builds(1)
            yield root, repo, bot
        finally:
            bot.close()


def latency_and_overhead(bin_dir: Path, commits: int, seed: int, command_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    latencies, overheads = [], []
    with _running(bin_dir, "true") as (_, repo, bot):
        for i in range(commits):
            time.sleep(rng.uniform(0.2, 0.6))
            git(repo, "commit", "-q", "--allow-empty", "-m", f"bench {i}")
            committed = time.monotonic()
            seen = bot.wait_builds(i + 2)
            newest = seen[max(seen)]
            latencies.append(newest[1] - committed)
            overheads.append(newest[1] - newest[0] - command_s)
        bot.check_passed()
    return {"latency": summarise(latencies), "overhead": summarise(overheads)}


def burst(bin_dir: Path, size: int) -> float:
    with _running(bin_dir, "true") as (_, repo, bot):
        git(repo, "checkout", "-q", "-b", "side")
        for i in range(size):
            git(repo, "commit", "-q", "--allow-empty", "-m", f"burst {i}")
        git(repo, "checkout", "-q", "main")
        pushed = time.monotonic()
        git(repo, "merge", "-q", "--ff-only", "side")
        bot.wait_builds(size + 1, timeout=600)
        took = time.monotonic() - pushed
        bot.check_passed()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="burst runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "buildbot.json")
    args = parser.parse_args()
    if shutil.which("git") is None:
        raise SystemExit("bench.buildbot: git is not installed (sudo bash scripts/setup.sh)")
    try:
        bin_dir = ensure_venv()
    except BuildbotUnavailable as exc:
        raise SystemExit(f"bench.buildbot: {exc}") from None
    command_s = command_seconds()
    figures = latency_and_overhead(bin_dir, args.commits, args.seed, command_s)
    times = sorted(burst(bin_dir, args.burst) for _ in range(args.repeat))
    figures["burst"] = {"commits": args.burst, "median_s": statistics.median(times), "min_s": times[0],
                        "max_s": times[-1]}
    lat, over, bur = figures["latency"], figures["overhead"], figures["burst"]
    print("Buildbot 4.3, GitPoller pollInterval 1 s, one local worker, `true`:")
    print(f"  latency   median {lat['median_ms']:.0f} ms   min {lat['min_ms']:.0f}   max {lat['max_ms']:.0f}"
          f"   ({lat['n']} commits)")
    print(f"  overhead  median {over['median_ms']:.0f} ms   min {over['min_ms']:.0f}   max {over['max_ms']:.0f}")
    print(f"  burst of {args.burst}: median {bur['median_s']:.2f} s   min {bur['min_s']:.2f}   max {bur['max_s']:.2f}"
          f"   ({args.repeat} runs)")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
