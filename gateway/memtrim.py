"""Gives the memory glibc's malloc keeps after large frees back to the system.

Buffers of 1-8 MiB freed by requests (bytes read back, a cut record's plaintext) stay
in glibc's heaps once its dynamic mmap threshold rose past their size, in one arena
per thread that allocated them. `malloc_trim(0)` returns their free pages: called from
a thread of its own, at most once an interval and only after enough was freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL = 1.0  # seconds between two trims at least
TRIM_AFTER = 32 << 20  # bytes of large buffers freed since the last trim before another


M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # the most glibc takes on 64-bit systems


def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def glibc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None when the C library is another one (musl, macOS).

    Called through ctypes.CDLL, which releases the GIL for the call."""
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def glibc_mmap_threshold(size: int) -> bool:
    """Have glibc's malloc map every allocation of `size` bytes or more on its own and
    unmap it when freed (`mallopt(M_MMAP_THRESHOLD)`); whether it did (glibc only).

    By default the threshold follows the largest such block freed, up to 32 MiB: once a
    few megabyte buffers were freed, later ones come from the heaps, where what is freed
    stays, between small blocks still in use, until a trim. Under hundreds of slow
    uploads the buffers that miss the pools (segments read back, tail pieces) are
    allocated and freed at a few times the rate bytes arrive: mapped on their own, they
    go back to the system as they are freed.

    The heaps' top is then given back only beyond twice the threshold, as glibc's own
    rule has it when it raises the threshold: with its fixed 128 KiB, each megabyte a
    download copies out would be given back and faulted in again, chunk after chunk.
    """
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not 0 < size <= MMAP_THRESHOLD_MAX:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * size))


class Trimmer:
    """Counts the bytes of large buffers freed; trims when `after` of them were, at most
    once every `interval` seconds."""

    def __init__(
        self,
        trim: Callable[[], object] | None,
        *,
        interval: float = TRIM_INTERVAL,
        after: int = TRIM_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim
        self._interval = interval
        self._after = after
        self._clock = clock
        self._freed = 0  # since the last trim; a lost update under a race only delays one
        self._last = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0
        self.trim_seconds = 0.0  # time spent in the trim calls

    def released(self, size: int) -> None:
        """`size` bytes of a large buffer were freed (any thread)."""
        self._freed += size

    def poll(self) -> bool:
        """Trim if it is due; whether it did."""
        if self._trim is None or self._freed < self._after:
            return False
        if self._clock() - self._last < self._interval:
            return False
        self._freed = 0
        started = time.perf_counter()
        self._trim()
        self.trim_seconds += time.perf_counter() - started
        self.trims += 1
        self._last = self._clock()
        return True

    def start(self) -> None:
        if self._trim is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gateway-trim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # never expected; the gateway works on without trimming
                log.exception("malloc_trim failed; no more trims")
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
