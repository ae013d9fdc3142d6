"""The closing line of a run's report, written and parsed here (no Locust import, so
tools and tests can read it):

    users=N uploads=U verified=V failures=F p50_patch_ms=P p99_patch_ms=Q peak_rss_mib=R
"""

from __future__ import annotations

import re

FIELDS = (
    "users",
    "uploads",
    "verified",
    "failures",
    "p50_patch_ms",
    "p99_patch_ms",
    "peak_rss_mib",
)
LINE = re.compile("^" + " ".join(f"{name}=(\\d+)" for name in FIELDS) + "$")


def format_line(figures: dict[str, float]) -> str:
    return " ".join(f"{name}={figures[name]:.0f}" for name in FIELDS)


def parse_line(text: str) -> dict[str, int]:
    """The figures of the closing line; ValueError when the text does not end in one."""
    lines = text.strip().splitlines()
    match = LINE.match(lines[-1]) if lines else None
    if match is None:
        raise ValueError("the text does not end in a summary line")
    return dict(zip(FIELDS, (int(g) for g in match.groups()), strict=True))
