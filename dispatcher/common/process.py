"""Stopping a process group in steps: the one way jobs, hooks and progress-wrapped
commands are stopped. A test command, a hook or mmdebstrap spawns children; they go with
their group, asked first (SIGTERM), then told (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

TERM_WAIT = 5.0
KILL_WAIT = 5.0


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when it is already gone (or not ours to signal)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pgid: int, exited: Callable[[float], bool], term_wait: float = TERM_WAIT,
               kill_wait: float = KILL_WAIT) -> bool:
    """SIGTERM the group, wait up to `term_wait` s for `exited`, SIGKILL what is left of the
    group, wait up to `kill_wait` s. `exited(timeout)` says whether the group's leader is
    gone. Returns whether it is. term_wait = 0 kills at once."""
    if term_wait > 0 and signal_group(pgid, signal.SIGTERM) and exited(term_wait):
        signal_group(pgid, signal.SIGKILL)  # the leader went; its children go too
        return True
    signal_group(pgid, signal.SIGKILL)
    return exited(kill_wait)


def popen_exited(proc: subprocess.Popen) -> Callable[[float], bool]:
    """`exited` for a Popen that leads its own group."""
    def exited(timeout: float) -> bool:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    return exited
