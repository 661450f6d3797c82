"""Whether a runner may lease its next job while it runs one (`Lease(ahead=True)`).

A job ahead is checked out while the current one runs, and started the moment it ends:
between two jobs the runner then pays only the job's own start, not the checkout and
the round trip of the result (15-25 ms on a 2-core VM, a tenth of a 0.2 s test). The
price is that the job waits on that runner until its current one ends, even if another
runner of the architecture falls idle meanwhile: so a job is leased ahead only behind a
short one, when that wait is short too. "Short" is what this dispatcher saw of the
repository on that architecture: the median of its last results' durations, learnt as
they come (after a restart, the first result of each teaches it again).
"""

from __future__ import annotations

import collections
import statistics
import threading
from typing import Deque

# A job ahead waits at most about this long behind the running one; against it, the
# 15-25 ms it saves is worth having only for jobs of a few seconds.
AHEAD_UNDER = 5.0
SAMPLES = 20  # results per (repo, arch) the median is taken over


class Durations:
    """The recent durations of jobs per (repo, arch), and the rule that reads them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], Deque[float]] = {}

    def add(self, repo: str, arch: str, seconds: float) -> None:
        with self._lock:
            self._seen.setdefault((repo, arch), collections.deque(maxlen=SAMPLES)).append(max(0.0, seconds))

    def short(self, repo: str, arch: str) -> bool:
        """Whether a job of `repo` on `arch` usually ends within AHEAD_UNDER seconds; False
        while nothing is known of it."""
        with self._lock:
            seen = list(self._seen.get((repo, arch), ()))
        return bool(seen) and statistics.median(seen) < AHEAD_UNDER
