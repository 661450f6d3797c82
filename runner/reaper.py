"""The test command's parent, run as its own tiny process: `python -I -S reaper.py CMD`.

Why it exists: a test command spawns children, and if the runner is killed with SIGKILL
nothing would stop them (Buildbot's worker leaves them running). This process leads the
job's process group and asks the kernel (PR_SET_PDEATHSIG) to signal it when the runner
dies; it then kills its whole group. It imports nothing from polyarch so it starts fast.
"""

import ctypes
import os
import sys

# The C module under `signal`: same functions and constants, without the enum machinery
# that makes `import signal` cost about 10 ms, paid on every job.
import _signal as signal

PR_SET_PDEATHSIG = 1


def _kill_group(signum, frame):
    os.killpg(0, signal.SIGKILL)  # the group includes this process: nothing runs on


def main():
    command = sys.argv[1]
    runner_pid = int(os.environ.get("POLYARCH_RUNNER_PID", "0"))
    signal.signal(signal.SIGUSR1, _kill_group)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    if runner_pid and os.getppid() != runner_pid:
        _kill_group(0, None)  # the runner died before the line above took effect
    # The runner stops a timed-out job with SIGTERM to the group; this process stays to
    # reap the shell and report. A Python handler (not SIG_IGN) so the shell keeps the
    # default disposition across exec.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", command], os.environ)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
