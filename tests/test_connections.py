"""The HTTP protocol: chunks reach the app uncopied; its limits reach worker processes.

Its behaviour on the wire is tested black-box in tests/test_http_edge.py.
"""

from __future__ import annotations

import pickle

from gateway.config import Settings
from gateway.connections import EdgeLimits, _append, protocol_factory


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


def test_the_protocol_factory_carries_the_edge_settings_to_worker_processes() -> None:
    """uvicorn pickles its config for --workers N: the bound limits must survive that."""
    settings = Settings(max_header_bytes=8192, header_timeout=3.0, linger_timeout=1.5)
    factory = pickle.loads(pickle.dumps(protocol_factory(settings)))
    assert factory.keywords["limits"] == EdgeLimits(8192, 3.0, 1.5, settings.linger_max_bytes)
