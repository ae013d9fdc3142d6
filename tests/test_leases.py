"""Leases and release requests, as a demanding mobile client sees them.

A phone switches networks in the middle of a PATCH: its old connection (A) stalls
with some body bytes sent, and the server still holds the upload for A. The client
gives up on A and resumes: HEAD, then PATCH from that offset. The HEAD asks A's
holder to let go (as tusd does); A's reading stops, what A brought is sealed and
recorded, A is answered (400 ERR_UPLOAD_INTERRUPTED), and only then does the HEAD
answer: with the offset A saved, so the PATCH that follows gets through on its first
try. A client that PATCHes blindly asks A's holder the same way and learns the
offset from a 409. All of that must take seconds, not a timeout, and the stored
bytes must be exact.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from tusclient import client as tus_client

from gateway import metrics
from gateway.leases import StopReason
from tests.conftest import read_stored
from tests.rawhttp import RawPatch, StreamingPatch
from tests.server import GatewayProcess
from tests.tushttp import create, error_code, head_offset, patch, patch_headers, upload_id

MiB = 1 << 20
SMALL_SEGMENTS = {"GATEWAY_SEGMENT_SIZE": "65536"}


def _resume(server: GatewayProcess, url: str, data: bytes, offset: int) -> tuple[int, list[int]]:
    """The client's loop: PATCH the rest from `offset`; on 409 take its offset and retry.

    Returns the offset the successful PATCH started from and the statuses seen.
    """
    statuses = []
    for _ in range(5):
        response = patch(server, url, data[offset:], offset)
        statuses.append(response.status_code)
        if response.status_code == 204:
            assert response.headers["Upload-Offset"] == str(len(data))
            return offset, statuses
        assert response.status_code == 409, (statuses, response.text)
        assert error_code(response) == "ERR_MISMATCHED_OFFSET", response.text
        offset = int(response.headers["Upload-Offset"])
    raise AssertionError(f"no PATCH got through: {statuses}")


def _stall_a(server: GatewayProcess, url: str, data: bytes, sent: int) -> RawPatch:
    """Connection A: announces the whole body, sends `sent` bytes, then goes silent."""
    a = RawPatch(server, url, 0, len(data))
    a.send(data[:sent])
    time.sleep(0.5)  # let the server take in what A sent
    return a


def _assert_a_answered(a: RawPatch, saved: int, *, wait_for_close: bool = False) -> None:
    """A is told at once that it was interrupted and where the upload now stands."""
    started = time.monotonic()
    response = a.read_response(timeout=5)
    assert time.monotonic() - started < 2.0, "A was answered only late"
    assert response.status == 400, response
    assert b"ERR_UPLOAD_INTERRUPTED" in response.body, response.body
    assert response.headers["upload-offset"] == str(saved), response.headers
    if wait_for_close:
        # The body was not all read: the answer says Connection: close, and the server
        # hangs up once the silent client has sent nothing for a moment (lingering close).
        assert a.closed_by_server(timeout=8), "A's connection was left open"
    a.close()


@pytest.mark.parametrize("env", [{}, SMALL_SEGMENTS], ids=["default-segment", "64k-segment"])
def test_stalled_patch_is_taken_over_by_head_then_patch(
    gateway_factory: Callable[..., GatewayProcess], env: dict[str, str]
) -> None:
    server = gateway_factory(**env)
    data = os.urandom(3 * MiB + 5)
    url = create(server, len(data))
    a_sent = 1_000_003
    a = _stall_a(server, url, data, a_sent)

    started = time.monotonic()
    seen = head_offset(server, url)
    # HEAD waited for A's holder to let go: nothing A sent was lost, and the offset
    # does not move after the HEAD, so the PATCH gets through on its first try.
    assert seen == a_sent
    resumed_from, statuses = _resume(server, url, data, seen)
    elapsed = time.monotonic() - started

    assert statuses == [204], statuses
    assert resumed_from == a_sent, (resumed_from, statuses)
    assert elapsed < 5.0, f"taking the upload over from a stalled PATCH took {elapsed:.1f} s"
    _assert_a_answered(a, a_sent)
    assert read_stored(server.data_dir, upload_id(url)) == data


@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")  # tuspy's own leak
def test_tuspy_resumes_after_a_network_switch_on_its_first_try(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """tuspy (no retries by default) resumes with HEAD, then PATCH: that PATCH must
    not meet a 409 because the stalled connection's bytes were saved after the HEAD."""
    server = gateway_factory()
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "scan.bin"
    path.write_bytes(data)
    url = create(server, len(data))
    a_sent = 1_000_003
    a = _stall_a(server, url, data, a_sent)

    client = tus_client.TusClient(
        server.files_url, headers={"Authorization": server.auth["Authorization"]}
    )
    uploader = client.uploader(file_path=str(path), url=url, chunk_size=MiB)
    assert uploader.retries == 0
    assert uploader.offset == a_sent  # its HEAD, answered once A's bytes were saved
    uploader.upload()
    assert uploader.offset == len(data)
    _assert_a_answered(a, a_sent)
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_stalled_patch_is_taken_over_by_a_blind_retry(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A client that does not HEAD first: it retries from the offset it last knew (0)."""
    server = gateway_factory(**SMALL_SEGMENTS)
    data = os.urandom(2 * MiB + 99)
    url = create(server, len(data))
    a_sent = 700_001
    a = _stall_a(server, url, data, a_sent)

    started = time.monotonic()
    resumed_from, statuses = _resume(server, url, data, 0)
    elapsed = time.monotonic() - started

    assert statuses == [409, 204], statuses
    assert resumed_from == a_sent
    assert elapsed < 5.0, f"resuming took {elapsed:.1f} s"
    _assert_a_answered(a, a_sent, wait_for_close=True)
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_stalled_patch_on_another_instance_is_released_through_the_catalog(
    tmp_path: Path,
) -> None:
    """Two gateway processes on one data dir: A's holder learns of the release request
    from the catalog at its next poll, not from an in-process call."""
    first = GatewayProcess(tmp_path / "data", env=dict(SMALL_SEGMENTS)).start()
    second = GatewayProcess(tmp_path / "data", env=dict(SMALL_SEGMENTS), token=first.token)
    try:
        second.start()
        data = os.urandom(2 * MiB + 1)
        url = create(first, len(data))
        a_sent = 900_009
        a = _stall_a(first, url, data, a_sent)

        other_url = second.files_url + upload_id(url)
        started = time.monotonic()
        seen = head_offset(second, other_url)
        resumed_from, statuses = _resume(second, other_url, data, seen)
        elapsed = time.monotonic() - started

        assert seen == a_sent
        assert statuses == [204], statuses
        assert resumed_from == a_sent, statuses
        assert elapsed < 5.0, f"a cross-instance takeover took {elapsed:.1f} s"
        _assert_a_answered(a, a_sent)
        assert read_stored(first.data_dir, upload_id(url)) == data
    finally:
        second.stop()
        first.stop()


def test_silent_patch_is_cut_after_network_timeout_and_saved(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Nobody asks for the upload: a body silent for network_timeout is cut, saved, answered."""
    server = gateway_factory(GATEWAY_NETWORK_TIMEOUT="1.5", **SMALL_SEGMENTS)
    data = os.urandom(MiB + 3)
    url = create(server, len(data))
    a_sent = 300_007
    a = _stall_a(server, url, data, a_sent)
    _assert_a_answered(a, a_sent)
    assert head_offset(server, url) == a_sent
    assert _resume(server, url, data, a_sent)[1] == [204]
    assert read_stored(server.data_dir, upload_id(url)) == data


def _race(
    server: GatewayProcess, url: str, bodies: list[bytes], offset: int
) -> list[httpx.Response]:
    """PATCH every body at `offset` at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        barrier.wait()
        responses[i] = httpx.patch(
            url, content=bodies[i], headers=patch_headers(server, offset), timeout=60
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


def _assert_refused_cleanly(response: httpx.Response) -> None:
    assert response.status_code in (409, 400), response.text
    expected = "ERR_MISMATCHED_OFFSET" if response.status_code == 409 else "ERR_UPLOAD_INTERRUPTED"
    assert error_code(response) == expected, response.text
    assert "Upload-Offset" in response.headers


def test_concurrent_duplicate_patches_never_corrupt(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A client that fires the same PATCH twice (a retry racing the original)."""
    server = gateway_factory(**SMALL_SEGMENTS)
    for round_ in range(6):
        data = os.urandom(1_500_000 + round_ * 70_001)
        url = create(server, len(data))
        first = 123_457 * round_
        if first:
            assert patch(server, url, data[:first], 0).status_code == 204
        responses = _race(server, url, [data[first:], data[first:]], first)
        ok = [r for r in responses if r.status_code == 204]
        for r in responses:
            if r.status_code != 204:
                _assert_refused_cleanly(r)
        assert len(ok) <= 1, [r.status_code for r in responses]
        offset = head_offset(server, url)
        assert first <= offset <= len(data)
        if offset < len(data):
            _resume(server, url, data, offset)
        assert read_stored(server.data_dir, upload_id(url)) == data, round_


def test_concurrent_different_patches_store_one_of_them_whole(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Two different bodies for the same offset: the bytes kept come from one request,
    never a mix, and only a request that was answered as having written them wrote them."""
    server = gateway_factory(**SMALL_SEGMENTS)
    for round_ in range(4):
        size = 1_200_000 + round_ * 33_333
        a, b = os.urandom(size), os.urandom(size)
        url = create(server, size)
        ra, rb = _race(server, url, [a, b], 0)
        offset = head_offset(server, url)
        statuses = (ra.status_code, rb.status_code)
        for r in (ra, rb):
            if r.status_code != 204:
                _assert_refused_cleanly(r)
        if offset == size:
            # One request wrote everything; the other never got to write a byte.
            assert statuses.count(204) == 1, statuses
            winner = a if ra.status_code == 204 else b
            assert read_stored(server.data_dir, upload_id(url)) == winner, statuses
            continue
        # Unfinished: finish with A's bytes; the prefix must be wholly A's or wholly B's.
        _resume(server, url, a, offset)
        stored = read_stored(server.data_dir, upload_id(url))
        assert stored in (a, b[:offset] + a[offset:]), (statuses, offset)


def test_streaming_patch_released_by_a_second_streaming_patch(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """Mid-body takeover between two live clients; the first is stopped while sending."""
    server = gateway_factory(**SMALL_SEGMENTS)
    data = os.urandom(6 * MiB + 11)
    url = create(server, len(data))
    first = StreamingPatch(server, url, data, 0, slow_after=2 * MiB, pause=0.01).begin()
    assert first.reached.wait(30)
    time.sleep(0.2)
    started = time.monotonic()
    resumed_from, _ = _resume(server, url, data, 0)
    elapsed = time.monotonic() - started
    first.join()
    assert elapsed < 10.0
    assert 0 < resumed_from <= first.sent
    # The first client is answered (or, if the server hung up mid-body, cut off).
    if first.response is not None:
        _assert_refused_cleanly(first.response)
        assert first.response.headers["Upload-Offset"] == str(resumed_from)
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_stop_reasons_keep_their_strings() -> None:
    """They were plain strings before the Enum; "too-slow" is a metric label too."""
    assert [str(reason) for reason in StopReason] == [
        "released",
        "timeout",
        "too-slow",
        "lease-lost",
        "shutdown",
        "disconnected",
    ]
    series = ("gateway_fairness_refusals_total", {"reason": "too-slow"})
    before = REGISTRY.get_sample_value(*series) or 0.0
    metrics.REFUSED.labels(StopReason.TOO_SLOW).inc()
    assert REGISTRY.get_sample_value(*series) == before + 1
