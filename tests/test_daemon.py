"""The stop request every daemon shares: first signal, second signal, grace."""

from __future__ import annotations

import os
import signal
import threading
import time

from dispatcher.common.daemon import StopRequest


def test_first_request_asks_second_insists() -> None:
    wake = threading.Event()
    stop = StopRequest(wake=(wake,))
    assert not stop.is_set() and not stop.now(grace=10)
    stop.on_signal()
    assert stop.is_set() and wake.is_set() and not stop.now(grace=10)
    stop.on_signal()
    assert stop.now(grace=10)


def test_one_request_becomes_now_after_the_grace() -> None:
    stop = StopRequest()
    stop.on_signal()
    stop.since = time.monotonic() - 5  # asked five seconds ago
    assert not stop.now(grace=10) and stop.now(grace=1)


def test_installed_it_takes_a_real_sigterm() -> None:
    stop = StopRequest()
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) and stop.count == 1
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
