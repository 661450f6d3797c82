"""Kills the runner's test commands when the runner dies: `python -I -S guard.py RUNNER_PID`.

Why it exists: a test command spawns children, and if the runner is killed with SIGKILL
nothing would stop them (Buildbot's worker leaves them running). One guard process runs
beside the runner for its whole life; the runner tells it, on the guard's stdin, each
job's process group as it starts (`+PGID`) and ends (`-PGID`). The runner holds the only
write end of that pipe, so the guard reads end-of-file exactly when the runner is gone,
however it died; it then kills every group it was told about, and every process still
carrying the runner's POLYARCH_RUNNER_PID in its environment (which covers a job the
runner started but died before announcing). It imports nothing from polyarch and
starts once, not per job: a Python start per job cost about 30 ms.
"""

import os
import sys

import _signal as signal  # the C module: `import signal` costs ~10 ms of enum machinery


def _marked_pids(runner_pid):
    """Processes whose environment says they belong to this runner's jobs."""
    mark = f"POLYARCH_RUNNER_PID={runner_pid}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            yield int(entry)


def main():
    runner_pid = int(sys.argv[1])
    # Ctrl-C in a terminal or SIGTERM from systemd to the runner must not stop the guard
    # first: it stops on its own when the runner is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        if text[:1] == b"+":
            groups.add(int(text[1:]))
        elif text[:1] == b"-":
            groups.discard(int(text[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for pid in _marked_pids(runner_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()
