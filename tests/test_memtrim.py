"""The trimmer: gives freed memory back after enough large frees, never more often than
its interval, and only where the C library is glibc."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.memtrim import Trimmer, glibc_mmap_threshold, glibc_trim

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        self.count += 1
        return 1


def test_it_trims_only_after_enough_was_freed() -> None:
    clock, calls = Clock(), Calls()
    trimmer = Trimmer(calls, interval=1.0, after=8 * MiB, clock=clock)
    clock.now += 5
    trimmer.released(7 * MiB)
    assert not trimmer.poll() and calls.count == 0
    trimmer.released(MiB)
    assert trimmer.poll() and calls.count == 1
    clock.now += 5
    assert not trimmer.poll()  # nothing freed since
    assert trimmer.trims == 1


def test_it_trims_at_most_once_an_interval() -> None:
    clock, calls = Clock(), Calls()
    trimmer = Trimmer(calls, interval=2.0, after=MiB, clock=clock)
    clock.now += 2
    trimmer.released(64 * MiB)
    assert trimmer.poll()
    trimmer.released(64 * MiB)
    clock.now += 1.9
    assert not trimmer.poll() and calls.count == 1
    clock.now += 0.1
    assert trimmer.poll() and calls.count == 2


def test_without_glibc_it_does_nothing() -> None:
    trimmer = Trimmer(None, after=1)
    trimmer.released(MiB)
    assert not trimmer.poll()
    trimmer.start()  # no thread
    trimmer.close()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_thread_calls_glibc_malloc_trim() -> None:
    trim = glibc_trim()
    assert trim is not None
    trimmer = Trimmer(trim, interval=0.01, after=1)
    trimmer.start()
    try:
        trimmer.released(MiB)
        deadline = time.monotonic() + 5
        while trimmer.trims == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert trimmer.trims == 1
    finally:
        trimmer.close()


def test_another_c_library_gets_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert glibc_trim() is None


def test_a_libc_without_malloc_trim_gets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert glibc_trim() is None


def test_a_failing_trim_stops_the_thread_and_the_gateway_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing() -> None:
        raise OSError("trim failed")

    trimmer = Trimmer(failing, interval=0.01, after=1)
    trimmer.start()
    try:
        trimmer.released(MiB)
        deadline = time.monotonic() + 5
        while "no more trims" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "malloc_trim failed; no more trims" in caplog.text
    finally:
        trimmer.close()
    trimmer.released(MiB)  # still counts; nothing raises


_MAPPED_PROBE = """
import ctypes, sys
from gateway.memtrim import glibc_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "set":
    assert glibc_mmap_threshold(1088 << 10)
freed = bytearray(8 << 20)  # mapped (above the default 128 KiB), then freed: glibc's
del freed                   # dynamic threshold rises past 8 MiB
before = libc.mallinfo2().hblks
small, large = bytearray(1 << 20), bytearray(2 << 20)
mapped = libc.mallinfo2().hblks - before
heap = libc.mallinfo2().arena
del small  # below the threshold: from the heap, whose top is not given back at once
print(mapped, heap - libc.mallinfo2().arena)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize(("mode", "mapped"), [("set", 1), ("default", 0)])
def test_the_threshold_maps_large_buffers_on_their_own(mode: str, mapped: int) -> None:
    """Set, a buffer above it is mapped on its own (so freeing it gives it back) and one
    below is not; by default, once a large block was freed, neither is. Either way a
    megabyte freed at the heap's top stays for the next one (no faulting in again)."""
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.stdout.split() == [str(mapped), "0"]


def test_a_threshold_out_of_glibc_s_range_is_not_set() -> None:
    assert not glibc_mmap_threshold(0)
    assert not glibc_mmap_threshold(64 << 20)


def test_another_c_library_gets_no_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", ""))
    assert not glibc_mmap_threshold(2 << 20)
