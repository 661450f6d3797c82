"""Shared-secret authentication by challenge and HMAC-SHA256.

The secret never crosses the wire: the server sends a random nonce, the client answers
with HMAC(secret, server nonce | client nonce | role | name), and the server proves it
knows the secret too with HMAC over the nonces in the other order, so a runner cannot
be lured into handing its results to an impostor.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from dispatcher.common.errors import AuthError

SECRET_BYTES = 32


def load_secret(path: Path, create: bool = False) -> bytes:
    """Read the shared secret; with `create`, make it (mode 0600) when it is absent."""
    path = Path(path)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SECRET_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AuthError(f"{path}: secret file missing (start the dispatcher once to create it, "
                        "or copy it from the dispatcher host)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"{path}: cannot read secret file: {exc}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise AuthError(f"{path}: secret file is readable by others; run: chmod 600 {path}")
    if len(text) < 16:
        raise AuthError(f"{path}: secret is shorter than 16 characters")
    return text.encode("utf-8")


def new_nonce() -> str:
    return secrets.token_hex(16)


def client_mac(secret: bytes, server_nonce: str, client_nonce: str, role: str, name: str) -> str:
    msg = "|".join(("polyarch-auth-1", server_nonce, client_nonce, role, name)).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def server_proof(secret: bytes, server_nonce: str, client_nonce: str) -> str:
    msg = "|".join(("polyarch-proof-1", client_nonce, server_nonce)).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def verify(expected: str, given: str) -> bool:
    """Constant-time comparison, so the time taken says nothing about the secret."""
    return hmac.compare_digest(expected.encode(), given.encode())


class AuthThrottle:
    """Slows down repeated authentication failures from one address.

    The first `free` failures within `window` seconds cost nothing (a runner with a
    stale secret should hear about it at once); each further one waits twice as long as
    the last, up to `cap`. Memory is bounded: at most `max_addresses` are remembered.
    """

    def __init__(self, free: int = 3, base: float = 0.25, cap: float = 5.0, window: float = 300.0,
                 max_addresses: int = 10_000, clock: Optional[Callable[[], float]] = None) -> None:
        self.free, self.base, self.cap, self.window = free, base, cap, window
        self.max_addresses = max_addresses
        self._clock = clock or time.monotonic
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def failed(self, address: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        now = self._clock()
        with self._lock:
            count, last = self._failures.pop(address, (0, now))
            count = 1 if now - last > self.window else count + 1
            self._failures[address] = (count, now)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        if count <= self.free:
            return 0.0
        return min(self.cap, self.base * 2 ** (count - self.free - 1))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
