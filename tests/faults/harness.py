"""Seeded kill trials: a burst of commits, a daemon killed at random moments, then a check.

A trial is fully described by (daemon, seed): the kill times, the victims and the
restart delays all come from random.Random(seed), so a failing trial is replayed with
`POLYARCH_FAULT_SEED=<seed> pytest tests/faults/test_kill.py -k <daemon>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from conftest import GitRepo, Polyarch
from dispatcher.common.files import TMP_PREFIX
from faults.conftest import scale

RESULT_LINE = re.compile(r"result demo ([0-9a-f]{12}) amd64: (\w+) \(attempt (\d+), runner (\S+)\)")


@dataclasses.dataclass
class Check:
    """What one trial verified."""

    commits: int = 0
    results: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    duplicated: list[str] = dataclasses.field(default_factory=list)
    partial: list[str] = dataclasses.field(default_factory=list)
    temporaries: list[str] = dataclasses.field(default_factory=list)
    kills: int = 0
    stop_seconds: list[float] = dataclasses.field(default_factory=list)
    bad_exits: list[int] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.partial or self.temporaries or self.bad_exits)


class ResultWatcher:
    """Reads every result file as it appears and remembers the first version of each.

    A result that later changes (another runner, another attempt) is a duplicate: the
    contract is one result per (commit, arch), written once."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.first: dict[str, dict] = {}
        self.changed: set[str] = set()
        self.unreadable: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ResultWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.scan()

    def scan(self) -> None:
        for path in self.results.glob("demo/*/amd64.json"):
            sha = path.parent.name
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                self.unreadable.add(sha)  # a reader must never see half a file
                continue
            key = {k: data.get(k) for k in ("runner", "attempt", "started_at", "status")}
            if sha not in self.first:
                self.first[sha] = key
            elif self.first[sha] != key:
                self.changed.add(sha)


def setup(env: Polyarch, runners: int) -> None:
    env.write_config(heartbeat_timeout=1, max_attempts=10, poll_interval=0.5, test_command="sh test.sh")
    env.repo.commit("exit 0")
    env.dispatcher()
    for i in range(runners):
        env.runner(f"r{i + 1}")
    env.observer()
    head = env.repo.git("rev-parse", "HEAD")
    env.wait_results([head])


UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def stop_timeout(daemon: str) -> float:
    """TimeoutStopSec of the daemon's example unit: after it, systemd sends SIGKILL."""
    text = (UNITS / f"polyarch-{daemon}.service").read_text()
    match = re.search(r"^TimeoutStopSec=(\d+)", text, re.M)
    return float(match.group(1)) if match else 90.0  # systemd's DefaultTimeoutStopSec


CHAOS = "chaos"  # any daemon, SIGKILL or SIGSTOP


def run_kill_trial(env: Polyarch, daemon: str, seed: int, commits: int = 50, runners: int = 2,
                   graceful: bool = False) -> Check:
    """Kill `daemon` (dispatcher, observer or runner) at seeded moments during a burst.

    With `graceful`, the kill is a SIGTERM and the trial also records how long the daemon
    took to exit and with what code. With daemon CHAOS, each moment picks any daemon and
    either SIGKILLs it (then starts it again) or stops it (SIGSTOP) for up to 2 s."""
    rng = random.Random(seed)
    setup(env, runners)
    check = Check()
    kills = sorted(rng.uniform(0.0, 3.0) for _ in range(rng.randint(1, 3) * (2 if daemon == CHAOS else 1)))

    def fault() -> None:
        package = rng.choice(("dispatcher", "observer", "runner")) if daemon == CHAOS else daemon
        victim = _victim(env, package, rng)
        check.kills += 1
        if daemon == CHAOS and rng.random() < 0.5:
            victim.signal(signal.SIGSTOP)
            time.sleep(rng.uniform(0.2, 2.0))  # the stall itself is the fault injected
            victim.signal(signal.SIGCONT)
            return
        if graceful:
            began = time.monotonic()
            code = victim.stop(timeout=stop_timeout(daemon))
            check.stop_seconds.append(time.monotonic() - began)
            # systemd counts SIGTERM's own default action as a clean stop: a daemon
            # signalled before its handler is installed (just restarted) exits that way.
            if code not in (0, -signal.SIGTERM):
                check.bad_exits.append(code)
        else:
            victim.kill()
        time.sleep(rng.uniform(0.0, 1.0))
        _restart(env, package, victim)

    root_commit = env.repo.git("rev-list", "--max-parents=0", "HEAD")
    shas, watcher = burst_with_faults(env.repo, env.results, commits, kills, fault)
    tally(check, watcher, env.results, shas, [root_commit], logged_twice(env.daemons))
    return check


def burst_with_faults(repo: GitRepo, results: Path, commits: int, moments: list[float],
                      fault: Callable[[], None]) -> tuple[list[str], "ResultWatcher"]:
    """Push a burst of `commits` (from a thread) and call `fault()` at each of `moments`
    (seconds after the first push), then wait up to 120 s for every result; the watcher
    has read each result file as it appeared."""
    shas: list[str] = []
    with ResultWatcher(results) as watcher:
        pusher = threading.Thread(target=lambda: shas.extend(
            repo.burst(commits, lambda i: "sleep 0.0%d" % (i % 5))), daemon=True)
        start = time.monotonic()
        pusher.start()
        for at in sorted(moments):
            time.sleep(max(0.0, at - (time.monotonic() - start)))
            fault()
        pusher.join()
        deadline = time.monotonic() + 120
        while not all(_result_file(results, s).exists() for s in shas) and time.monotonic() < deadline:
            time.sleep(0.1)
    return shas, watcher


def _result_file(results: Path, sha: str) -> Path:
    return results / "demo" / sha / "amd64.json"


def tally(check: Check, watcher: "ResultWatcher", results: Path, shas: list[str], known: list[str],
          logged_twice: set[str]) -> None:
    """Fill `check` from a burst's commits (`known`: other commits with a result)."""
    by_short = {s[:12]: s for s in [*known, *shas]}
    check.commits = len(shas)
    check.lost = [s for s in shas if not _result_file(results, s).exists()]
    check.results = len(shas) - len(check.lost)
    check.partial = sorted(watcher.unreadable)
    twice = {by_short.get(short, short) for short in logged_twice}
    # A result for a commit nobody pushed would be a duplicate under another name.
    strangers = {p.parent.name for p in results.glob("demo/*/amd64.json")} - set(by_short.values())
    check.duplicated = sorted(watcher.changed | twice | strangers)
    # A page or summary being written this instant has a temporary for a moment (a commit's
    # files are rewritten when its parent's result comes, after the burst too). One still
    # there once the writes have settled, and still there a minute later, was left behind.
    # (The snapshot taken is the one looked at: a second look could catch the next write.)
    deadline = time.monotonic() + 30
    temps = list(results.rglob(TMP_PREFIX + "*"))
    while temps and time.monotonic() < deadline:
        time.sleep(0.05)
        temps = list(results.rglob(TMP_PREFIX + "*"))
    check.temporaries = [what for what in map(left_behind, temps) if what]


def left_behind(tmp: Path, watch: float = 60.0) -> str:
    """Empty when `tmp` goes within `watch` seconds (its writer is alive), else what tells a
    stalled writer from a file left behind: its age and size, and the processes that hold
    it open and where their threads wait."""
    began = time.monotonic()
    while tmp.exists() and time.monotonic() - began < watch:
        time.sleep(0.1)
    try:
        info = tmp.stat()
    except OSError:
        return ""
    facts = [f"{time.time() - info.st_mtime:.1f} s old", f"{info.st_size} bytes"]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(tmp) for fd in (proc / "fd").iterdir()):
                waits = sorted({(t / "wchan").read_text() or "-" for t in (proc / "task").iterdir()})
                state = (proc / "stat").read_text().split(") ")[1].split()[0]
                facts.append(f"open in pid {proc.name} (state {state}, threads wait in {', '.join(waits)})")
        except OSError:
            continue
    return f"{tmp} ({'; '.join(facts)}; still there {watch:.0f} s later)"


def _victim(env: Polyarch, daemon: str, rng: random.Random):
    alive = [d for d in env.daemons if d.alive and d.package == daemon]
    assert alive, f"no live {daemon} to kill"
    return rng.choice(alive)


def _restart(env: Polyarch, daemon: str, victim) -> None:
    if daemon == "dispatcher":
        env.dispatcher()
    elif daemon == "observer":
        env.observer()
    else:
        env.runner(victim.args[1])


def logged_twice(daemons) -> set[str]:
    """Commits whose result the dispatcher logs wrote with two different (attempt, runner)."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for d in daemons:
        if d.package != "dispatcher":
            continue
        for m in RESULT_LINE.finditer(d.log()):
            seen.setdefault(m.group(1), set()).add((m.group(3), m.group(4)))
    return {sha for sha, writes in seen.items() if len(writes) > 1}


def seeds(base: int, short: int, long: int) -> list[int]:
    """The trial seeds of one test: base, base+1, ...; POLYARCH_FAULT_SEED replays one."""
    fixed = os.environ.get("POLYARCH_FAULT_SEED")
    return [int(fixed)] if fixed else [base + i for i in range(scale(short, long))]


@dataclasses.dataclass
class Trials:
    """What a series of trials checked, summed, and the seeds that failed."""

    totals: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(
        ("trials", "commits", "results", "kills", "lost", "duplicated", "partial", "temporaries"), 0))
    failures: list[str] = dataclasses.field(default_factory=list)
    stop_seconds: list[float] = dataclasses.field(default_factory=list)


def run_trials(tmp_path: Path, daemon: str, trial_seeds: list[int], commits: int, runners: int = 2,
               graceful: bool = False) -> Trials:
    """run_kill_trial once per seed, each in a fresh folder, tallied."""
    out = Trials()
    for seed in trial_seeds:
        root = tmp_path / f"seed{seed}"
        root.mkdir()
        env = Polyarch(root, GitRepo(root / "upstream"))
        try:
            check = run_kill_trial(env, daemon, seed, commits=commits, runners=runners, graceful=graceful)
        finally:
            env.close()
        out.stop_seconds += check.stop_seconds
        out.totals["trials"] += 1
        for key in ("commits", "results", "kills"):
            out.totals[key] += getattr(check, key)
        for key in ("lost", "duplicated", "partial", "temporaries"):
            out.totals[key] += len(getattr(check, key))
        if not check.ok:
            out.failures.append(f"seed {seed}: lost {check.lost}, duplicated {check.duplicated}, partial "
                                f"{check.partial}, temporaries {check.temporaries}, exit codes {check.bad_exits} "
                                f"(logs in {root})")
    return out
