"""Prometheus metrics: tusd's names, so tusd dashboards work, plus gateway_* histograms.

Works with several worker processes: when PROMETHEUS_MULTIPROC_DIR is set (the CLI
sets it for `--workers N`), every process writes its values there and `/metrics`
aggregates them. tusd exposes some counters without the `_total` suffix
(`tusd_bytes_received`, `tusd_uploads_created`, ...); prometheus_client always
adds `_total` to counters, so those are summed gauges that only ever go up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

T = TypeVar("T")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _total_like(name: str, doc: str) -> Gauge:
    return Gauge(name, doc, multiprocess_mode="sum")


# -- tusd's series ----------------------------------------------------------------------
REQUESTS = Counter("tusd_requests", "Requests received, by method.", ["method"])
ERRORS = Counter("tusd_errors", "Error responses, by status and error code.", ["status", "code"])
BYTES_RECEIVED = _total_like("tusd_bytes_received", "Upload body bytes received.")
UPLOADS_CREATED = _total_like("tusd_uploads_created", "Uploads created.")
UPLOADS_FINISHED = _total_like("tusd_uploads_finished", "Uploads completed.")
UPLOADS_TERMINATED = _total_like("tusd_uploads_terminated", "Uploads terminated by clients.")
CONNECTIONS_OPEN = Gauge(
    "tusd_connections_open", "Open client connections.", multiprocess_mode="livesum"
)

# -- the gateway's own ------------------------------------------------------------------
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Request duration, by method and status.",
    ["method", "status"],
    buckets=_LATENCY,
)
BYTES_SEALED = Counter("gateway_bytes_sealed", "Plaintext bytes sealed into records and pieces.")
BYTES_STORED = Counter("gateway_bytes_stored", "Sealed bytes written to the object store.")
SEAL_DURATION = Histogram(
    "gateway_seal_duration_seconds",
    "Worker time to hash and seal one record (both sealing threads, summed).",
    buckets=_FAST,
)
STORE_DURATION = Histogram(
    "gateway_store_operation_duration_seconds",
    "Object-store calls, by operation and outcome.",
    ["operation", "outcome"],
    buckets=(*_FAST, 10, 30),
)
CATALOG_DURATION = Histogram(
    "gateway_catalog_operation_duration_seconds",
    "Catalog calls, by operation and outcome.",
    ["operation", "outcome"],
    buckets=_FAST,
)
LOCK_WAIT = Histogram(
    "gateway_lock_wait_seconds", "Time a request waited for an upload's lease.", buckets=_FAST
)
RELEASE_REQUESTS = Counter(
    "gateway_lock_release_requests", "Requests that asked a running writer to let go."
)
CHECKSUM_MISMATCHES = Counter(
    "gateway_checksum_mismatches", "PATCH bodies whose Upload-Checksum did not match."
)
AUTH_FAILURES = Counter("gateway_auth_failures", "Requests refused for missing or bad tokens.")
AUTH_THROTTLED = Counter(
    "gateway_auth_throttled",
    "Authentications refused 429 after too many failures, by what was limited (address, prefix).",
    ["limit"],
)
OIDC_JWKS_FETCHES = Counter(
    "gateway_oidc_jwks_fetches",
    "Fetches of the identity provider's JWKS (and discovery document), by outcome.",
    ["outcome"],
)
ACTIVE_UPLOADS = Gauge(
    "gateway_active_uploads", "Uploads with a PATCH running now.", multiprocess_mode="livesum"
)
BYTES_IN_FLIGHT = Gauge(
    "gateway_bytes_in_flight",
    "Received bytes not yet recorded durably.",
    multiprocess_mode="livesum",
)
REAPED = Counter("gateway_reaper_actions", "Uploads removed by the reaper, by reason.", ["reason"])
SEAL_FAILURES = Counter("gateway_seal_failures", "Segments that failed to seal or store.")
METHOD_OVERRIDES = Counter(
    "gateway_method_overrides",
    "Requests carrying X-HTTP-Method-Override: honoured (on POST) or ignored.",
    ["outcome"],
)
HEADER_TIMEOUTS = Counter(
    "gateway_header_timeouts",
    "Connections closed for headers not arriving in time: idle (no byte) or partial (408).",
    ["kind"],
)
LINGERING = Gauge(
    "gateway_lingering_connections",
    "Connections reading and dropping a refused body before closing.",
    multiprocess_mode="livesum",
)
LINGER_CLOSES = Counter(
    "gateway_lingering_closes",
    "Lingering closes by how they ended: "
    "drained, client_closed, idle, timeout, byte_limit, malformed.",
    ["outcome"],
)
LINGER_DROPPED_BYTES = Counter(
    "gateway_lingering_dropped_bytes", "Bytes of refused requests read and dropped."
)
REFUSED = Counter(
    "gateway_fairness_refusals",
    "Requests refused or bodies cut to keep principals' shares fair, by reason "
    "(writers, busy, rate, open-uploads, open-bytes, too-slow).",
    ["reason"],
)
AUDIT_ENTRIES = Counter(
    "gateway_audit_entries", "Audit log entries appended, by action.", ["action"]
)
AUDIT_FAILURES = Counter(
    "gateway_audit_append_failures",
    "Audit entries that could not be appended (logged as errors; the request went on).",
)
AUDIT_APPEND_DURATION = Histogram(
    "gateway_audit_append_duration_seconds", "Time to append one audit entry.", buckets=_FAST
)
TAIL_MERGES = Counter("gateway_tail_merges", "Times a segment's tail pieces were merged into one.")
# -- notifications (gateway/hooks/) --
HOOK_DELIVERIES = Counter(
    "gateway_hook_deliveries",
    "Webhook delivery attempts, by outcome: delivered (2xx), failed (retried later), "
    "dead (attempts ran out).",
    ["outcome"],
)
HOOK_DELIVERY_LATENCY = Histogram(
    "gateway_hook_delivery_latency_seconds",
    "From an event's creation (the upload's completion) to its delivery, retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
HOOK_REQUEST_DURATION = Histogram(
    "gateway_hook_request_duration_seconds",
    "One POST to a hook, by outcome (delivered, failed; pre_create_accepted, "
    "pre_create_rejected, pre_create_unavailable).",
    ["outcome"],
    buckets=_LATENCY,
)
HOOK_OUTBOX_DEPTH = Gauge(
    "gateway_hook_outbox_depth",
    "Webhook deliveries in the catalog's outbox, by state (pending, dead).",
    ["state"],
    multiprocess_mode="livemax",
)
HOOK_PRE_CREATE = Counter(
    "gateway_hook_pre_create",
    "Pre-create hook answers: accepted, rejected, unavailable (the upload refused, 503).",
    ["outcome"],
)


@contextmanager
def timed(histogram: Histogram, operation: str) -> Iterator[None]:
    start = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        histogram.labels(operation, outcome).observe(time.perf_counter() - start)


# A part write is timed as put_part however it arrives: whole, or finished after spans.
OPERATION_LABELS = {"finish_part": "put_part"}

# Not operations: the readiness probe (/readyz is timed as a request) and shutting down.
_UNTIMED = frozenset({"check", "close"})


def operations(*protocols: type) -> frozenset[str]:
    """The methods `protocols` declare, their protocol bases' too, but check and close:
    what `instrument` should time, so that a method added to a protocol is timed.

    Optional capabilities (like `InPlaceStore`'s) may be listed: a target without
    one of their methods still has none once instrumented.
    """
    names: set[str] = set()
    for protocol in protocols:
        if not getattr(protocol, "_is_protocol", False):
            raise TypeError(f"{protocol.__name__} is not a Protocol")
        for cls in protocol.__mro__:
            if cls is Protocol or not getattr(cls, "_is_protocol", False):
                continue
            names.update(
                name
                for name, value in vars(cls).items()
                if callable(value) and not name.startswith("_") and name not in _UNTIMED
            )
    return frozenset(names)


def instrument(target: T, histogram: Histogram, operations: frozenset[str]) -> T:
    """Wrap `target` so each call to one of `operations` is timed by outcome."""
    return _Instrumented(target, histogram, operations)  # type: ignore[return-value]


class _Instrumented:
    def __init__(self, target: Any, histogram: Histogram, operations: frozenset[str]) -> None:
        self._target = target
        self._histogram = histogram
        self._operations = operations

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._operations or not callable(attribute):
            return attribute
        histogram = self._histogram

        label = OPERATION_LABELS.get(name, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with timed(histogram, label):
                return attribute(*args, **kwargs)

        return call


def exposition() -> tuple[bytes, str]:
    """The text exposition, aggregated over worker processes when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
