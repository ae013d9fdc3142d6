"""Slow clients: a token bucket around a socket's send, the way a mobile link paces bytes."""

from __future__ import annotations

import socket
import time

SLICE = 16 << 10  # the most sent at once on a throttled socket


class TokenBucket:
    """`rate` bytes per second with bursts of up to `burst` bytes."""

    def __init__(self, rate: float, burst: int = 64 << 10) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self, count: int) -> None:
        """Wait until `count` bytes (at most `burst`) may go."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < count:
            time.sleep((count - self._tokens) / self.rate)
            self._last = time.monotonic()
            self._tokens = 0.0
        else:
            self._tokens -= count


def send(sock: socket.socket, data: bytes, bucket: TokenBucket | None) -> None:
    """sendall, paced by `bucket` when there is one."""
    if bucket is None:
        sock.sendall(data)
        return
    view = memoryview(data)
    step = min(SLICE, bucket.burst)
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        bucket.take(len(piece))
        sock.sendall(piece)
