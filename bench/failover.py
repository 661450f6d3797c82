"""Failover: two dispatchers on one PostgreSQL, the one a runner and the observer use
killed with SIGKILL while the runner runs a job.

    .venv/bin/python -m bench.failover [--repeat 5] [--json FILE]

Real processes: a private PostgreSQL cluster (bench/postgres.py), dispatchers A and B
sharing it and one results folder, one runner and the observer listing [A, B]. Each
run pushes a commit whose test sleeps 1 s, kills A once the job has started, and
pushes another commit at once. Measured from the kill: until the running job's result
is in the results folder (the runner moves to B, which adopts its lease and publishes),
and until the commit pushed after the kill has its result (the observer moves to B,
which leases it to the runner). A publishes first, so each kill also moves publishing.
Medians, min and max over `--repeat` runs.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from bench.postgres import Cluster
from bench.rig import ROOT, Daemon, git, new_repo, wait_file, write_json

HEARTBEAT_TIMEOUT = 10  # the default: the bound the guarantee names


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, url: str, listen: int, order: list[int], secret: Path, results: Path, repo: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    clients = "[" + ", ".join(f'"127.0.0.1:{p}"' for p in order) + "]"
    path = folder / "polyarch.toml"
    path.write_text(textwrap.dedent(f"""\
        [dispatcher]
        listen = "127.0.0.1:{listen}"
        state = "{url}"
        token_file = "{secret}"
        results_dir = "{results}"
        heartbeat_timeout = {HEARTBEAT_TIMEOUT}
        [observer]
        dispatcher = {clients}
        poll_interval = 0.5
        [runner]
        dispatcher = {clients}
        [[repos]]
        name = "bench"
        url = "{repo}"
        architectures = ["amd64"]
        test_command = "sh test.sh"
        """))
    return path


def _commit(repo: Path, seconds: float) -> str:
    (repo / "test.sh").write_text(f"sleep {seconds}\n")
    git(repo, "add", "test.sh")
    git(repo, "commit", "-q", "-m", f"sleep {seconds} at {time.time()}")
    return git(repo, "rev-parse", "HEAD")


def run_once(cluster: Cluster, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="polyarch-failover-") as tmp:
        root = Path(tmp)
        repo = new_repo(root)
        url = cluster.create_database(f"failover{n}")
        a_port, b_port = _port(), _port()
        secret, results = root / "secret", root / "test_results"
        a = _config(root / "a", url, a_port, [a_port, b_port], secret, results, repo)
        b = _config(root / "b", url, b_port, [a_port, b_port], secret, results, repo)
        started = []
        try:
            for config, name in ((a, "dispatcher"), (b, "dispatcher")):
                started.append(Daemon(name, config, config.parent, config.parent / f"{name}.log").start())
                started[-1].wait_ready(60)
            started.append(Daemon("observer", a, root / "a", root / "a" / "observer.log").start())
            started.append(Daemon("runner", a, root / "a", root / "a" / "runner.log", ["--name", "r1"]).start())
            first = _commit(repo, 0)
            wait_file(results / "bench" / first / "amd64.json", timeout=120)
            running = _commit(repo, 1.0)
            log = root / "a" / "runner.log"
            deadline = time.monotonic() + 60
            while f"running bench {running[:12]}" not in log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the job never started")
                time.sleep(0.005)
            started[0].kill()
            killed = time.monotonic()
            after = _commit(repo, 0)
            held = wait_file(results / "bench" / running / "amd64.json", timeout=120) - killed
            pushed = wait_file(results / "bench" / after / "amd64.json", timeout=120) - killed
            return {"running_job_s": held, "next_commit_s": pushed}
        finally:
            for d in reversed(started):
                d.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "failover.json")
    args = parser.parse_args()
    cluster = Cluster().init().start()
    try:
        runs = [run_once(cluster, i) for i in range(args.repeat)]
    finally:
        cluster.close()
    figures = {"repeat": args.repeat, "heartbeat_timeout": HEARTBEAT_TIMEOUT}
    for key in ("running_job_s", "next_commit_s"):
        values = sorted(r[key] for r in runs)
        figures[key] = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
    print(f"failover after kill -9 of the dispatcher in use ({args.repeat} runs, heartbeat_timeout "
          f"{HEARTBEAT_TIMEOUT} s): the running job's result {figures['running_job_s']['median']:.2f} s median "
          f"(min {figures['running_job_s']['min']:.2f}, max {figures['running_job_s']['max']:.2f}; the job had up "
          f"to 1 s left); a commit pushed at the kill {figures['next_commit_s']['median']:.2f} s median (min "
          f"{figures['next_commit_s']['min']:.2f}, max {figures['next_commit_s']['max']:.2f})")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
