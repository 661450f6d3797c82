"""The client side of the protocol, shared by the observer, the runner and the CLI."""

from __future__ import annotations

import logging
import select
import socket
import ssl
from typing import Callable, Optional, Sequence, TypeVar

from dispatcher.wire.auth import client_mac, new_nonce, server_proof, verify
from dispatcher.common.config import Address
from dispatcher.common.errors import AuthError, ProtocolError, RemoteError
from dispatcher.wire.protocol import Ack, Auth, Error, ErrorCode, Hello, Message, Role, Welcome
from dispatcher.wire.frames import Channel

log = logging.getLogger("polyarch.client")


CONNECT_TIMEOUT = 5.0


class Connection:
    """An authenticated connection to the dispatcher: one request, one reply."""

    def __init__(self, address: Address, role: Role, name: str, secret: bytes,
                 timeout: float = CONNECT_TIMEOUT, tls: Optional[ssl.SSLContext] = None) -> None:
        self.address = address
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=address.host)
            except BaseException:
                sock.close()
                raise
        self.channel = Channel(sock)
        try:
            self.heartbeat_interval = self._handshake(role, name, secret, timeout)
        except BaseException:
            self.close()
            raise

    def _handshake(self, role: Role, name: str, secret: bytes, timeout: float) -> float:
        hello = self.channel.recv(timeout)
        if not isinstance(hello, Hello):
            raise ProtocolError(f"{self.address}: expected hello from the dispatcher, got {hello!r:.80}")
        nonce = new_nonce()
        self.channel.send(Auth(role=role, name=name, nonce=nonce,
                               mac=client_mac(secret, hello.nonce, nonce, role.value, name)))
        reply = self.channel.recv(timeout)
        if isinstance(reply, Error):
            if reply.code == ErrorCode.AUTH_FAILED:
                raise AuthError(f"dispatcher at {self.address} refused our secret: {reply.message}")
            raise RemoteError(reply.code, reply.message, usage=reply.code.usage)
        if not isinstance(reply, Welcome):
            raise ProtocolError(f"{self.address}: expected welcome, got {reply!r:.80}")
        if not verify(server_proof(secret, hello.nonce, nonce), reply.proof):
            raise AuthError(f"{self.address} does not know the shared secret: not our dispatcher")
        return reply.heartbeat_interval

    def peer_closed(self) -> bool:
        """True when the dispatcher has hung up (it closes a connection after idle_timeout of
        silence). Between requests it never speaks first, so anything to read now is the
        end of the connection (EOF, or a TLS close_notify)."""
        try:
            readable, _, _ = select.select([self.channel.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def request(self, msg: Message, timeout: Optional[float] = 30.0,
                sent: Optional[Callable[[], None]] = None) -> Message:
        """Send one request; return the reply, raising RemoteError for an error reply.
        `sent` runs once the request is on its way, while the dispatcher works on it."""
        self.channel.send(msg)
        if sent is not None:
            sent()
        reply = self.channel.recv(timeout)
        if reply is None:
            raise ConnectionError(f"dispatcher at {self.address} closed the connection")
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message, usage=reply.code.usage)
        return reply

    def request_ack(self, msg: Message, timeout: Optional[float] = 30.0) -> Ack:
        """A request whose only good answer is ACK; anything else is a protocol error."""
        reply = self.request(msg, timeout)
        if not isinstance(reply, Ack):
            raise ProtocolError(f"dispatcher at {self.address} answered {msg.KIND.value} with {reply.KIND.value}")
        return reply

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


C = TypeVar("C")


class Dispatchers:
    """The dispatchers a client may use (`dispatcher = [...]` in its section), in the
    config's order. A client keeps to the one that answered last and moves to the next
    when that one is gone: it refuses the connection, does not finish the handshake in
    time, or answers `unavailable` (its state cannot be reached). A wrong secret is not
    "gone": that AuthError reaches the caller, as it would from any dispatcher."""

    def __init__(self, addresses: Callable[[], Sequence[Address]]) -> None:
        self._addresses = addresses  # read at each connect: port 0 means a file that may change
        self._current = 0
        self.last: Optional[Address] = None  # the one connected to last, for messages

    def connect(self, make: Callable[[Address], C]) -> C:
        addresses = list(self._addresses())
        if len(addresses) == 1:  # nowhere to move: the error as it is
            made = make(addresses[0])
            self.last = addresses[0]
            return made
        failed = []
        for k in range(len(addresses)):
            i = (self._current + k) % len(addresses)
            try:
                made = make(addresses[i])
            except (OSError, ProtocolError) as exc:
                failed.append(f"{addresses[i]}: {exc}")
                continue
            except RemoteError as exc:
                if exc.code != ErrorCode.UNAVAILABLE:
                    raise
                failed.append(f"{addresses[i]}: {exc}")
                continue
            if i != self._current and self.last is not None:
                log.warning("dispatcher at %s is gone; now using %s", self.last, addresses[i])
            self._current, self.last = i, addresses[i]
            return made
        raise ConnectionError("no dispatcher answers: " + "; ".join(failed))
