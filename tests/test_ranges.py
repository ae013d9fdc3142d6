"""Range header parsing, including the edges of the representation."""

from __future__ import annotations

import pytest

from gateway.ranges import Unsatisfiable, parse_range


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-0", 10, (0, 1)),
        ("bytes=0-9", 10, (0, 10)),
        ("bytes=0-99", 10, (0, 10)),
        ("bytes=5-", 10, (5, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=9-9", 10, (9, 10)),
        ("bytes=3-2", 10, None),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=-", 10, None),
        ("bytes= 1-2", 10, None),
        ("bytes=a-b", 10, None),
    ],
)
def test_parse(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range([header], size) == expected


@pytest.mark.parametrize(
    "header, size",
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=-5", 0), ("bytes=0-", 0)],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range([header], size)


def test_absent_or_repeated_header_means_everything() -> None:
    assert parse_range([], 10) is None
    assert parse_range(["bytes=0-1", "bytes=2-3"], 10) is None
