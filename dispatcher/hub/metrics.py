"""Prometheus metrics of the dispatcher, in the text exposition format (version 0.0.4).

Gauges (queue depth, jobs by status, connected runners) are read from the store and
the presence table at scrape time. Counters and the latency histogram live in memory
and start from zero with the process, as Prometheus counters may: `rate()` and
`histogram_quantile()` handle resets. A result is counted when its files are written
(by the publisher), a moment after it is durable.
"""

from __future__ import annotations

import bisect
import threading
from typing import Iterable, Mapping

# Seconds from a commit reaching the dispatcher to one arch's final result: from a quick
# native test (under a second) to a long emulated suite.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lease_expiries = 0
        self.results: dict[str, int] = {}
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def expired(self, n: int) -> None:
        with self._lock:
            self.lease_expiries += n

    def result(self, status: str, latency: float) -> None:
        with self._lock:
            self.results[status] = self.results.get(status, 0) + 1
            self._counts[bisect.bisect_left(BUCKETS, latency)] += 1
            self._sum += max(0.0, latency)

    def render(self, queue: Mapping[str, int], jobs: Mapping[str, int], runners: Mapping[str, int]) -> str:
        """The exposition text; `queue` is queued jobs per arch, `jobs` jobs per state or
        final status, `runners` connected runners per arch."""
        out: list[str] = []
        _gauge(out, "polyarch_queue_depth", "Jobs queued and not yet leased, per architecture.",
               (({"arch": a}, n) for a, n in sorted(queue.items())))
        _gauge(out, "polyarch_jobs", "Jobs by state (queued, running) or final status.",
               (({"status": s}, n) for s, n in sorted(jobs.items())))
        _gauge(out, "polyarch_runners_connected", "Runners connected now, per architecture.",
               (({"arch": a}, n) for a, n in sorted(runners.items())))
        with self._lock:
            out += ["# HELP polyarch_lease_expiries_total Leases taken back from runners that stopped heartbeating.",
                    "# TYPE polyarch_lease_expiries_total counter",
                    f"polyarch_lease_expiries_total {self.lease_expiries}",
                    "# HELP polyarch_results_total Final results recorded since the dispatcher started.",
                    "# TYPE polyarch_results_total counter"]
            out += [f'polyarch_results_total{{status="{s}"}} {n}' for s, n in sorted(self.results.items())]
            name = "polyarch_commit_to_result_seconds"
            out += [f"# HELP {name} Seconds from a commit reaching the dispatcher to each architecture's result.",
                    f"# TYPE {name} histogram"]
            cumulative = 0
            for bound, count in zip(BUCKETS, self._counts):
                cumulative += count
                out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
            cumulative += self._counts[-1]
            out += [f'{name}_bucket{{le="+Inf"}} {cumulative}', f"{name}_sum {self._sum:.6f}",
                    f"{name}_count {cumulative}"]
        return "\n".join(out) + "\n"


def _gauge(out: list[str], name: str, help_text: str, samples: Iterable[tuple[dict[str, str], int]]) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{text}}} {value}")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
