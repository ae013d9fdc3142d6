"""/metrics, black-box: the exposition a real gateway serves, parsed as Prometheus would.

(And, in-process, which store and catalog calls `metrics.instrument` times.)

Counters and histograms are compared before and after the requests under test, so
the requests the tests themselves make (startup probes, earlier scrapes) do not
matter. tusd's names are kept: tusd_bytes_received and tusd_uploads_* are gauges
that only go up (no _total), counters carry _total, histograms _bucket/_sum/_count.
"""

from __future__ import annotations

import base64
import inspect
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway import metrics
from gateway.catalog.base import Catalog, LeaseCatalog, TokenStore
from gateway.layout import data_key
from gateway.store.base import InPlaceStore, ObjectStore
from tests.server import GatewayProcess
from tests.tushttp import (
    OCTET,
    create,
    error_code,
    flip_stored_byte,
    head_offset,
    patch,
    patch_headers,
    upload,
    upload_id,
)


@dataclass
class Scrape:
    """One parsed /metrics response."""

    samples: list[Sample]
    types: dict[str, str] = field(default_factory=dict)  # family name -> metric type

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name` over every series whose labels include `labels`; 0 if none."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            for s in self.samples
        )

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def label_names(self, name: str) -> set[str]:
        return {k for s in self.samples if s.name == name for k in s.labels}


def scrape(server: GatewayProcess, token: str | None = None) -> Scrape:
    response = httpx.get(
        f"{server.url}/metrics",
        headers={"Authorization": f"Bearer {token or server.token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    result = Scrape([])
    for family in text_string_to_metric_families(response.text):
        result.types[family.name] = family.type
        result.samples.extend(family.samples)
    return result


def delta(before: Scrape, after: Scrape) -> Callable[..., float]:
    def d(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    return d


def post_with_body(server: GatewayProcess, data: bytes) -> str:
    """Creation-with-upload: the POST carries the whole body."""
    response = httpx.post(
        server.files_url,
        content=data,
        headers={**server.auth, "Upload-Length": str(len(data)), "Content-Type": OCTET},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    return response.headers["Location"]


def raw_status(server: GatewayProcess, path: str, headers: bytes) -> str:
    """GET over a bare socket, for header bytes httpx refuses to send; the status line."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
        + headers
        + b"Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


# -- uploads -----------------------------------------------------------------------------


def test_uploads_move_the_counters_and_histograms(gateway: GatewayProcess) -> None:
    before = scrape(gateway)
    patched = [os.urandom(n) for n in (1, 70_000, 300_000)]
    for data in patched:
        upload(gateway, data)  # POST, one PATCH, HEAD
    with_body = os.urandom(5_000)
    post_with_body(gateway, with_body)  # POST only
    create(gateway, 0)  # an empty upload is finished by its POST
    after = scrape(gateway)
    d = delta(before, after)
    sent = sum(map(len, patched)) + len(with_body)

    assert d("tusd_uploads_created") == 5
    assert d("tusd_uploads_finished") == 5
    assert d("tusd_uploads_terminated") == 0
    assert d("tusd_requests_total", method="POST") == 5
    assert d("tusd_requests_total", method="PATCH") == 3
    assert d("tusd_requests_total", method="HEAD") == 3
    assert d("tusd_requests_total", method="GET") == 1, "the first scrape counts, once"
    assert d("tusd_bytes_received") == sent, "PATCH and POST bodies, byte for byte"
    assert d("gateway_bytes_sealed_total") == sent, "one PATCH per upload seals each byte once"
    assert d("gateway_bytes_stored_total") > sent, "ciphertext carries headers and tags"
    assert d("tusd_errors_total") == 0

    for method, status, n in (("PATCH", "204", 3), ("POST", "201", 5), ("HEAD", "200", 3)):
        labels = {"method": method, "status": status}
        assert d("gateway_request_duration_seconds_count", **labels) == n, labels
        assert d("gateway_request_duration_seconds_bucket", le="+Inf", **labels) == n, labels
        assert d("gateway_request_duration_seconds_sum", **labels) > 0, labels
    patch_buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in after.samples
        if s.name == "gateway_request_duration_seconds_bucket"
        and s.labels["method"] == "PATCH"
        and s.labels["status"] == "204"
    )
    counts = [v for _, v in patch_buckets]
    assert counts == sorted(counts), f"buckets must be cumulative: {patch_buckets}"

    assert d("gateway_store_operation_duration_seconds_count", operation="put_part") >= 3
    assert (
        d(
            "gateway_store_operation_duration_seconds_count",
            operation="complete_multipart",
            outcome="ok",
        )
        == 5
    )
    assert d("gateway_store_operation_duration_seconds_count", outcome="error") == 0
    assert d("gateway_catalog_operation_duration_seconds_count", operation="create_upload") == 5
    assert d("gateway_seal_duration_seconds_count") >= 4
    assert d("gateway_lock_wait_seconds_count") >= 3
    assert after.value("gateway_active_uploads") == 0
    assert after.value("gateway_bytes_in_flight") == 0
    assert after.has("tusd_connections_open")
    assert after.value("tusd_connections_open") >= 1, "the scrape's own connection is open"

    # The names tusd dashboards use, with tusd's types.
    for name in ("tusd_bytes_received", "tusd_uploads_created", "tusd_uploads_finished"):
        assert after.types.get(name) == "gauge", (name, after.types.get(name))
    assert after.types.get("tusd_connections_open") == "gauge"
    assert after.types.get("tusd_requests") == "counter"
    assert after.types.get("tusd_errors") == "counter"
    assert after.types.get("gateway_request_duration_seconds") == "histogram"


def test_errors_are_counted_by_status_and_code(gateway: GatewayProcess) -> None:
    data = os.urandom(1_000)
    url = create(gateway, len(data))
    finished = upload(gateway, os.urandom(2_000))
    before = scrape(gateway)

    conflict = patch(gateway, url, data[5:], 5)
    assert conflict.status_code == 409
    assert error_code(conflict) == "ERR_MISMATCHED_OFFSET"

    wrong = base64.b64encode(b"\x00" * 20).decode()
    mismatch = httpx.patch(
        url,
        content=data,
        headers=patch_headers(gateway, 0, **{"Upload-Checksum": f"sha1 {wrong}"}),
        timeout=30,
    )
    assert mismatch.status_code == 460, mismatch.text
    assert error_code(mismatch) == "ERR_CHECKSUM_MISMATCH"
    assert head_offset(gateway, url) == 0, "a mismatching body records nothing"

    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "1"}
    for headers in ({}, {"Authorization": "Bearer gwt_not-a-token"}, {"Authorization": "Basic x"}):
        refused = httpx.post(gateway.files_url, headers={**tus, **headers}, timeout=10)
        assert refused.status_code == 401
        assert error_code(refused) == "ERR_UNAUTHORIZED"

    missing = httpx.head(f"{gateway.files_url}AAAAAAAAAAAAAAAAAAAAAA", headers=gateway.auth)
    assert missing.status_code == 404

    # A stored record that no longer verifies: ERR_STORED_DATA_CORRUPT, which alerts.
    flip_stored_byte(gateway.data_dir, data_key(upload_id(finished)), -1)
    corrupt = httpx.get(finished, headers=gateway.auth, timeout=30)
    assert corrupt.status_code == 500
    assert error_code(corrupt) == "ERR_STORED_DATA_CORRUPT"

    deleted = httpx.delete(url, headers=gateway.auth, timeout=30)
    assert deleted.status_code == 204

    d = delta(before, scrape(gateway))
    assert d("tusd_errors_total", status="409", code="ERR_MISMATCHED_OFFSET") == 1
    assert d("tusd_errors_total", status="460", code="ERR_CHECKSUM_MISMATCH") == 1
    assert d("gateway_checksum_mismatches_total") == 1
    assert d("tusd_errors_total", status="401", code="ERR_UNAUTHORIZED") == 3
    assert d("gateway_auth_failures_total") == 3
    assert d("tusd_errors_total", status="404", code="ERR_UPLOAD_NOT_FOUND") == 1
    assert d("tusd_errors_total", status="500", code="ERR_STORED_DATA_CORRUPT") == 1
    assert d("tusd_errors_total") == 7
    assert d("gateway_request_duration_seconds_count", method="PATCH", status="409") == 1
    assert d("gateway_request_duration_seconds_count", method="PATCH", status="460") == 1
    assert d("gateway_request_duration_seconds_count", method="POST", status="401") == 3
    assert d("gateway_request_duration_seconds_count", method="GET", status="500") == 1
    assert d("tusd_uploads_terminated") == 1
    assert d("tusd_requests_total", method="DELETE") == 1
    assert d("tusd_uploads_created") == 0
    assert d("tusd_uploads_finished") == 0
    assert d("gateway_seal_failures_total") == 0


def test_counters_start_from_zero_after_a_restart(gateway: GatewayProcess) -> None:
    data = os.urandom(10_000)
    url = upload(gateway, data)
    first = scrape(gateway)
    assert first.value("tusd_uploads_created") == 1
    assert first.value("tusd_bytes_received") == len(data)

    gateway.stop()
    gateway.start()
    fresh = scrape(gateway)
    for name in (
        "tusd_uploads_created",
        "tusd_uploads_finished",
        "tusd_bytes_received",
        "gateway_bytes_sealed_total",
        "gateway_bytes_stored_total",
        "gateway_auth_failures_total",
    ):
        assert fresh.value(name) == 0, f"{name} is per process: it starts again at 0"
    assert not fresh.has("tusd_requests_total", method="POST")
    assert not fresh.has("gateway_request_duration_seconds_count", method="PATCH")
    assert head_offset(gateway, url) == len(data), "the upload itself survived the restart"


# -- what is timed ---------------------------------------------------------------------------


class _AnswersEverything:
    """A backend with every method: each call returns its own name."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: name


def _declared(*protocols: type) -> set[str]:
    """The public methods of `protocols`, inherited ones too, as Python lists them."""
    return {
        name
        for protocol in protocols
        for name, _ in inspect.getmembers(protocol, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize(
    ("protocols", "untimed"),
    [((ObjectStore, InPlaceStore), {"check"}), ((Catalog,), {"check", "close"})],
    ids=["store", "catalog"],
)
def test_every_protocol_method_is_timed(protocols: tuple[type, ...], untimed: set[str]) -> None:
    registry = CollectorRegistry()
    histogram = Histogram("ops_seconds", "Calls.", ["operation", "outcome"], registry=registry)
    timed = metrics.instrument(_AnswersEverything(), histogram, metrics.operations(*protocols))
    declared = _declared(*protocols)
    assert untimed <= declared
    calls: dict[str, float] = {}
    for name in sorted(declared):
        assert getattr(timed, name)() == name
        if name not in untimed:
            label = metrics.OPERATION_LABELS.get(name, name)
            calls[label] = calls.get(label, 0.0) + 1.0
    for name in sorted(declared):
        label = metrics.OPERATION_LABELS.get(name, name)
        count = registry.get_sample_value(
            "ops_seconds_count", {"operation": label, "outcome": "ok"}
        )
        assert count == calls.get(label), name


def test_operations_of_one_concern() -> None:
    assert metrics.operations(TokenStore) == {
        "add_token",
        "api_key",
        "principal_for",
        "api_keys",
        "revoke_token",
        "token_used",
        "token_count",
    }
    assert metrics.operations(LeaseCatalog) == _declared(LeaseCatalog)
    store = metrics.operations(ObjectStore, InPlaceStore)
    assert metrics.operations(ObjectStore) < store
    # What the hand-written lists had missed.
    assert {"size", "write_span", "read_span_into", "discard_from"} <= store
    assert "wrapped_key" in metrics.operations(Catalog)
    with pytest.raises(TypeError):
        metrics.operations(_AnswersEverything)


def test_a_missing_capability_stays_missing() -> None:
    class Plain:
        def get(self) -> bytes:
            return b""

    registry = CollectorRegistry()
    histogram = Histogram("ops_seconds", "Calls.", ["operation", "outcome"], registry=registry)
    timed = metrics.instrument(Plain(), histogram, metrics.operations(ObjectStore, InPlaceStore))
    assert getattr(timed, "write_span", None) is None  # so writes_in_place() sees no capability
    assert timed.get() == b""


def test_reads_are_timed_by_the_running_gateway(gateway: GatewayProcess) -> None:
    before = scrape(gateway)
    data = os.urandom(10_000)
    url = upload(gateway, data)
    assert httpx.get(url, headers=gateway.auth, timeout=30).content == data
    d = delta(before, scrape(gateway))
    # Neither was timed while the operation lists were written by hand.
    assert d("gateway_store_operation_duration_seconds_count", operation="size") >= 1
    assert d("gateway_catalog_operation_duration_seconds_count", operation="wrapped_key") >= 1


# -- who may scrape ------------------------------------------------------------------------


def test_metrics_needs_a_token(gateway_factory: Callable[..., GatewayProcess]) -> None:
    metrics_token = "metrics-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    server = gateway_factory(GATEWAY_METRICS_TOKEN=metrics_token)
    url = f"{server.url}/metrics"
    before = scrape(server)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {metrics_token}x"},
        {"Authorization": f"Basic {metrics_token}"},
        {"Authorization": "Bearer"},
    ):
        refused = httpx.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401, (headers, refused.status_code)
        assert error_code(refused) == "ERR_UNAUTHORIZED"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "tusd_" not in refused.text

    assert scrape(server, token=metrics_token).has("tusd_requests_total")
    assert scrape(server).has("tusd_requests_total"), "a client token works too"
    d = delta(before, scrape(server))
    assert d("gateway_auth_failures_total") == 5

    # The metrics token is for /metrics only: it is not a client token.
    create_with_it = httpx.post(
        server.files_url,
        headers={"Authorization": f"Bearer {metrics_token}", "Tus-Resumable": "1.0.0"},
        timeout=10,
    )
    assert create_with_it.status_code == 401


def test_metrics_without_a_metrics_token_setting(gateway: GatewayProcess) -> None:
    # With no GATEWAY_METRICS_TOKEN, "Bearer " plus the empty setting must not match.
    assert httpx.get(f"{gateway.url}/metrics", timeout=10).status_code == 401
    for header in (b"Bearer ", b"Bearer", b"Bearer  \t"):
        status = raw_status(gateway, "/metrics", b"Authorization: " + header + b"\r\n")
        assert status.split(" ")[1] == "401", (header, status)
    assert scrape(gateway).has("tusd_connections_open")


def test_metrics_token_check_refuses_non_ascii_headers(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_METRICS_TOKEN="metrics-token-for-this-test")
    # httpx will not send a non-ASCII header value; the bytes go over a bare socket.
    status_line = raw_status(server, "/metrics", b"Authorization: Bearer \xe9t\xe9\r\n")
    assert status_line.split(" ")[1] == "401", (
        "GET /metrics with a non-ASCII Authorization header must be refused with 401, got "
        f"{status_line!r}: gateway/app.py metrics_endpoint passes str values to "
        "hmac.compare_digest, which raises TypeError for non-ASCII str, so any client can "
        "make /metrics answer 500 (and feed the 5xx alert)"
    )


# -- several worker processes ---------------------------------------------------------------


def test_workers_sum_their_metrics(gateway_factory: Callable[..., GatewayProcess]) -> None:
    server = gateway_factory(GATEWAY_WORKERS="2")
    bodies = [os.urandom(2_000 + i) for i in range(16)]
    # Each helper call opens a new connection; four at a time spread them over workers.
    with ThreadPoolExecutor(4) as pool:
        urls = list(pool.map(lambda data: upload(server, data), bodies))
    assert len(set(urls)) == len(bodies)
    total = sum(map(len, bodies))

    gets = []
    for _ in range(6):
        # A worker counts a request just after answering it; the next scrape may be
        # served by the other worker, so give that bookkeeping a moment.
        time.sleep(0.05)
        seen = scrape(server)
        assert seen.value("tusd_uploads_created") == len(bodies), "summed over workers"
        assert seen.value("tusd_uploads_finished") == len(bodies)
        assert seen.value("tusd_requests_total", method="POST") == len(bodies)
        assert seen.value("tusd_requests_total", method="PATCH") == len(bodies)
        assert seen.value("tusd_bytes_received") == total
        assert seen.value("gateway_bytes_sealed_total") == total
        assert seen.value(
            "gateway_request_duration_seconds_count", method="PATCH", status="204"
        ) == len(bodies)
        assert seen.value("gateway_active_uploads") == 0
        assert seen.has("tusd_connections_open")
        assert seen.value("tusd_connections_open") >= 1
        gets.append(seen.value("tusd_requests_total", method="GET"))
    assert gets == sorted(gets) and gets[-1] - gets[0] == len(gets) - 1, (
        f"every scrape counts once, whichever worker serves it: {gets}"
    )
    per_process = list((server.data_dir / "metrics-multiproc").glob("counter_*.db"))
    assert len(per_process) == 2, f"two worker processes write metrics: {per_process}"
