"""What every polyarch daemon shares about stopping: one stop-request object.

The signal handler only records (as uvicorn's handle_exit does); the daemon's loop acts.
First SIGTERM or SIGINT: finish or hand back the current work, then stop. A second, or
the first one older than the daemon's grace period: stop now.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Iterable, Optional


class StopRequest:
    def __init__(self, wake: Iterable[threading.Event] = ()) -> None:
        self._event = threading.Event()
        self._wake = tuple(wake)  # events the daemon sleeps on: set too, so it notices at once
        self.count = 0
        self.since = 0.0

    def install(self) -> None:
        """Take SIGTERM and SIGINT (main thread only)."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        self.count += 1
        self.since = self.since or time.monotonic()
        self._event.set()
        for event in self._wake:
            event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)

    def now(self, grace: float) -> bool:
        """Stop at once: asked twice, or asked once more than `grace` seconds ago."""
        return self.count >= 2 or (self.count == 1 and time.monotonic() - self.since > grace)
