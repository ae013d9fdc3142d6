"""HTTP Range requests (RFC 9110 section 14): one byte range, parsed strictly."""

from __future__ import annotations

import re

_SPEC = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class Unsatisfiable(Exception):
    """The range lies outside the representation: answer 416."""


def parse_range(values: list[str], size: int) -> tuple[int, int] | None:
    """Return [start, end) for a single satisfiable range; None means send it all.

    Several ranges, other units or a malformed header are ignored (a full 200 is a
    valid answer to any Range request); a well-formed range that misses the
    representation raises Unsatisfiable.
    """
    if len(values) != 1:
        return None
    match = _SPEC.fullmatch(values[0].strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "":
        if last == "":
            return None
        suffix = int(last)  # bytes=-N: the last N bytes
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        raise Unsatisfiable
    return start, end
