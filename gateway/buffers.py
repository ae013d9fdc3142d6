"""Pools of reusable buffers, so the hot path neither faults in fresh pages nor leaves
the C allocator's heaps full of freed megabytes."""

from __future__ import annotations

import threading
from collections.abc import Callable

SIZED_MIN = 64 << 10  # the smallest size class
SIZED_IDLE = 16 << 20  # idle bytes kept for all size classes together


def size_class(size: int) -> int:
    """`size` rounded up to a quarter of its power of two (at least SIZED_MIN): at most a
    quarter of a buffer is spare, and sizes from 64 KiB to 10 MiB make 30 classes."""
    if size <= SIZED_MIN:
        return SIZED_MIN
    step = 1 << ((size - 1).bit_length() - 3)
    return -(-size // step) * step


class BufferPool:
    """Hands out bytearrays of one size and takes them back; keeps at most `keep` idle.

    A fresh 8 MiB bytearray costs page faults and zeroing on first touch, on the event
    loop for receive buffers. Reused buffers are overwritten before they are read:
    callers only read the prefix they filled.
    """

    def __init__(
        self, size: int, keep: int = 8, released: Callable[[int], None] | None = None
    ) -> None:
        self.size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()
        self._released = released  # told of each buffer dropped because enough are idle

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
                return
        if self._released is not None:  # many downloads at once, say: freed now
            self._released(self.size)


class SizedBuffers:
    """Buffers for requests of varying size (a short body kept whole, a sealed tail
    piece), each of its size class, and the idle ones kept up to `idle` bytes in all.

    A buffer of 1-10 MiB freed after one request stays in glibc's heaps (past its
    dynamic mmap threshold) instead of going back to the system: reused, it never
    leaves. A buffer dropped because too many are idle is reported to `released`.
    """

    def __init__(self, idle: int = SIZED_IDLE, released: Callable[[int], None] | None = None):
        self._idle_cap = idle
        self._idle = 0
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()
        self._released = released

    @property
    def idle(self) -> int:
        """Bytes of idle buffers kept."""
        return self._idle

    def take(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes (its class's, or an idle one up to twice
        that); only its first `size` are the caller's to fill and read."""
        cls = size_class(size)
        with self._lock:
            # An idle buffer of a larger class, up to twice the size, does as well: a
            # fresh one is zeroed with the GIL held (for 8 MiB, milliseconds), and
            # hundreds of bodies of random lengths spread over many classes.
            fit = cls
            while fit <= 2 * cls:
                free = self._free.get(fit)
                if free:
                    self._idle -= fit
                    return free.pop()
                fit = size_class(fit + 1)
        return bytearray(cls)

    def give(self, buf: bytearray) -> None:
        """Take a buffer from `take` back (another one is only counted as released)."""
        size = len(buf)
        with self._lock:
            if size == size_class(size) and self._idle + size <= self._idle_cap:
                self._free.setdefault(size, []).append(buf)
                self._idle += size
                return
        self.released(size)

    def released(self, size: int) -> None:
        """`size` bytes of a large buffer were (or are about to be) freed."""
        if self._released is not None:
            self._released(size)


class Pools:
    """One pool per buffer size (segment plaintext, sealed record), and the sized buffers."""

    def __init__(self, keep: int = 8, *, sized: SizedBuffers | None = None) -> None:
        self._keep = keep
        self._pools: dict[int, BufferPool] = {}
        self._lock = threading.Lock()
        self.sized = sized if sized is not None else SizedBuffers()

    def for_size(self, size: int, keep: int | None = None) -> BufferPool:
        """The pool for `size`; `keep` (default: the pools' own) applies when it is made."""
        with self._lock:
            pool = self._pools.get(size)
            if pool is None:
                keep = self._keep if keep is None else keep
                pool = self._pools[size] = BufferPool(size, keep, self.sized.released)
            return pool
