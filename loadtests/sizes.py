"""Chunk-size classes for the request statistics: "2MiB" is (1 MiB, 2 MiB]."""

from __future__ import annotations


def size_class(size: int) -> str:
    bound = 1
    while bound < size:
        bound <<= 1
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if bound >= 1 << shift:
            return f"{bound >> shift}{unit}"
    return f"{bound}B"
