"""Property-based tests of the Range parser (gateway/ranges.py) against a reference model
of RFC 9110 section 14.1.2 for one byte range."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.ranges import Unsatisfiable, parse_range

FUZZ = settings(max_examples=200, deadline=None)
sizes = st.integers(0, 1 << 40)
numbers = st.one_of(st.just(""), st.integers(0, 10**19 - 1).map(str))


def model(first: str, last: str, size: int) -> tuple[int, int] | type[Unsatisfiable] | None:
    """What `bytes=first-last` means for a representation of `size` bytes."""
    if first == "":
        if last == "":
            return None
        if int(last) == 0 or size == 0:
            return Unsatisfiable
        return max(size - int(last), 0), size
    if last != "" and int(last) < int(first):
        return None
    if int(first) >= size:
        return Unsatisfiable
    return int(first), size if last == "" else min(int(last) + 1, size)


def parsed(values: list[str], size: int) -> tuple[int, int] | type[Unsatisfiable] | None:
    try:
        return parse_range(values, size)
    except Unsatisfiable:
        return Unsatisfiable


@FUZZ
@given(numbers, numbers, sizes, st.text(alphabet=" \t", max_size=2))
@example("0", "", 0, "")
@example("", "1", 0, "")
@example("5", "4", 10, "")
def test_one_range_means_what_the_rfc_says(first: str, last: str, size: int, pad: str) -> None:
    assert parsed([f"{pad}bytes={first}-{last}{pad}"], size) == model(first, last, size)


@FUZZ
@given(
    st.lists(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40), max_size=3), sizes
)
@example(["bytes=0-1,2-3"], 10)
@example(["bytes=\u00b3-4"], 10)
@example(["BYTES=0-1"], 10)
@example(["bytes=0-99999999999999999999"], 10)
def test_anything_is_a_range_inside_ignored_or_unsatisfiable(values: list[str], size: int) -> None:
    got = parsed(values, size)
    if isinstance(got, tuple):
        start, end = got
        assert 0 <= start < end <= size
        assert len(values) == 1 and values[0].strip().startswith("bytes=")
        # Header values reach the parser as latin-1: only ASCII digits may name a range.
        assert all(c.isascii() for c in values[0].strip())
