"""A small pool of segment-sized buffers, so the hot path does not fault in fresh pages."""

from __future__ import annotations

import threading


class BufferPool:
    """Hands out bytearrays of one size and takes them back; keeps at most `keep` idle.

    A fresh 8 MiB bytearray costs page faults and zeroing on first touch, on the event
    loop for receive buffers. Reused buffers are overwritten before they are read:
    callers only read the prefix they filled.
    """

    def __init__(self, size: int, keep: int = 8) -> None:
        self.size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buf: bytearray) -> None:
        if len(buf) != self.size:
            return
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


class Pools:
    """One pool per buffer size (segment plaintext, sealed record)."""

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._pools: dict[int, BufferPool] = {}
        self._lock = threading.Lock()

    def for_size(self, size: int, keep: int | None = None) -> BufferPool:
        """The pool for `size`; `keep` (default: the pools' own) applies when it is made."""
        with self._lock:
            pool = self._pools.get(size)
            if pool is None:
                pool = self._pools[size] = BufferPool(size, self._keep if keep is None else keep)
            return pool
