"""The run's report: a table of request statistics, the tallies, the gateways' resources,
and the closing line (loadtests/line.py). Its PATCH percentiles are of the time from
the gateway's host holding a chunk's every byte to the gateway's answer: the part of a
PATCH the gateway controls (the whole request is bound by each user's link speed and
is reported above it)."""

from __future__ import annotations

import resource
from dataclasses import asdict

from locust.env import Environment
from locust.stats import StatsEntry

from loadtests.context import Context
from loadtests.line import format_line
from loadtests.procstats import Peak


def merged(environment: Environment, kind: str) -> StatsEntry:
    total = StatsEntry(environment.stats, kind, "", use_response_times_cache=False)
    for entry in environment.stats.entries.values():
        if entry.method == kind:
            total.extend(entry)
    return total


def failures(environment: Environment) -> int:
    """Failed requests and checks, and exceptions a user's task raised (Locust logs
    those and goes on: here they count)."""
    raised = environment.runner.exceptions.values() if environment.runner else []
    return environment.stats.total.num_failures + sum(int(e["count"]) for e in raised)


def report(environment: Environment, ctx: Context, users: int, peak: Peak, seconds: float) -> str:
    out = [f"{'type':<6} {'name':<14} {'reqs':>7} {'fails':>6} {'p50':>7} {'p99':>7} {'max':>7}"]
    entries = sorted(environment.stats.entries.values(), key=lambda e: (e.method or "", e.name))
    for e in entries:
        out.append(
            f"{e.method or '':<6} {e.name:<14} {e.num_requests:>7} {e.num_failures:>6} "
            f"{e.get_response_time_percentile(0.5):>7.0f} "
            f"{e.get_response_time_percentile(0.99):>7.0f} {e.max_response_time or 0:>7.0f}"
        )
    errors = environment.stats.errors.values()
    for error in sorted(errors, key=lambda x: -x.occurrences)[:10]:
        out.append(f"failure x{error.occurrences}: {error.method} {error.name}: {error.error}")
    if environment.runner is not None:
        for row in environment.runner.exceptions.values():
            out.append(f"exception x{row['count']}: {row['msg']}\n{row['traceback']}")
    tally = ctx.tally
    unverified = tally.uploads - tally.verified
    mb_up = tally.uploaded_bytes / seconds / 1e6 if seconds else 0.0
    out.append(
        " ".join(f"{k}={v}" for k, v in asdict(tally).items())
        + f" unverified={unverified} upload_mb_s={mb_up:.1f}"
    )
    out.append(
        f"gateway: peak_rss_mib={peak.rss_mib:.1f} peak_open_files={peak.open_files} "
        f"cpu_s={peak.cpu_s:.1f} over {seconds:.0f} s"
    )
    own = resource.getrusage(resource.RUSAGE_SELF)
    saturated = environment.runner is not None and environment.runner.cpu_warning_emitted
    out.append(
        f"load generator: cpu_s={own.ru_utime + own.ru_stime:.1f}"
        + (" (it reached 90% of a core: the figures are partly the client's)" if saturated else "")
    )
    ack, whole = merged(environment, "ACK"), merged(environment, "PATCH")
    out.append(
        f"PATCH whole request (bound by each user's bandwidth): "
        f"p50_ms={whole.get_response_time_percentile(0.5):.0f} "
        f"p99_ms={whole.get_response_time_percentile(0.99):.0f}"
    )
    out.append(
        format_line(
            {
                "users": users,
                "uploads": tally.uploads,
                "verified": tally.verified,
                "failures": failures(environment),
                "p50_patch_ms": ack.get_response_time_percentile(0.5),
                "p99_patch_ms": ack.get_response_time_percentile(0.99),
                "peak_rss_mib": peak.rss_mib,
            }
        )
    )
    return "\n".join(out)
