"""systemd's notify protocol (Type=notify, WatchdogSec=): a datagram, a few lines.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
        return True
    except OSError:
        return False


class Watchdog:
    """Pings WATCHDOG=1 at half the period systemd asked for, when called often enough."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._next = 0.0

    def ping(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now >= self._next:
            notify("WATCHDOG=1")
            self._next = now + self.interval

    @property
    def max_sleep(self) -> float:
        """How long the caller may block before the next ping is due."""
        return self.interval if self.interval is not None else 3600.0
