"""Who gets a connection slot: a bounded number, and strangers cannot crowd out runners.

Every connection costs a descriptor and memory (and a thread until it authenticates),
so the total is capped (`max_connections`). Peers that have not yet authenticated are capped separately (`max_unauthenticated`): when a new
connection arrives and either cap is reached, the oldest unauthenticated connection is
cut to make room. A real runner authenticates within milliseconds, so it is never the
oldest stranger; a flood of silent or slow connections only ever evicts itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict

log = logging.getLogger("polyarch.dispatcher")


class Admission:
    def __init__(self, max_connections: int, max_unauthenticated: int) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, min(max_unauthenticated, max_connections))
        self._lock = threading.Lock()
        self._open = 0
        # socket -> (its fd, when it connected). The fd is kept because a TLS handshake
        # detaches the original socket object from it.
        self._strangers: OrderedDict[socket.socket, tuple[int, float]] = OrderedDict()
        self.evicted = 0
        self.refused = 0

    def admit(self, sock: socket.socket, peer: str) -> bool:
        """Called on the accepting thread before a handler thread exists."""
        with self._lock:
            full = self._open >= self.max_connections
            if (full or len(self._strangers) >= self.max_unauthenticated) and self._strangers:
                self._evict_oldest()
                full = self._open - 1 >= self.max_connections  # the evicted one is on its way out
            if full:
                self.refused += 1
                log.warning("refusing connection from %s: %d connections open (max_connections)", peer, self._open)
                return False
            self._open += 1
            self._strangers[sock] = (sock.fileno(), time.monotonic())
            return True

    def _evict_oldest(self) -> None:
        _, (fd, since) = self._strangers.popitem(last=False)
        self.evicted += 1
        log.info("cut an unauthenticated connection open for %.1f s to make room", time.monotonic() - since)
        try:
            # shutdown() acts on the connection, not the descriptor: through a duplicate it
            # wakes the handler thread blocked in recv, which then closes and frees its slot.
            # The fd is still open: `closed` runs before the handler closes its socket.
            with socket.socket(fileno=os.dup(fd)) as dup:
                dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def authenticated(self, sock: socket.socket) -> None:
        with self._lock:
            self._strangers.pop(sock, None)

    def closed(self, sock: socket.socket) -> None:
        """Called by the handler before it closes the socket."""
        with self._lock:
            self._open -= 1
            self._strangers.pop(sock, None)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    @property
    def unauthenticated(self) -> int:
        with self._lock:
            return len(self._strangers)
