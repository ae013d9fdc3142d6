"""The HTTP protocol's body handling: chunks reach the app without being copied."""

from __future__ import annotations

from gateway.connections import _append


def test_a_chunk_with_nothing_before_it_is_passed_on_as_it_is() -> None:
    chunk = b"x" * 300_000
    assert _append(bytearray(), chunk) is chunk
    assert bytes(_append(b"", chunk)) is chunk  # what uvicorn's receive() hands the app


def test_chunks_that_arrive_before_the_app_reads_are_joined_in_order() -> None:
    first, second, third = b"a" * 70_000, b"b" * 5, b"c" * 3
    joined = _append(_append(_append(bytearray(), first), second), third)
    assert bytes(joined) == first + second + third
    grown = bytearray(b"ab")
    assert _append(grown, b"c") is grown and grown == b"abc"  # appended in place
