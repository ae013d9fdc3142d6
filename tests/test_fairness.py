"""One principal can never starve the others: writers, trickles, rates, quotas, tails.

Each test drives a real `gateway serve`: one principal misbehaves (bodies that trickle
a byte at a time, bursts of requests, thousands of tiny PATCHes) while another, or the
same one afterwards, must still get through with exact bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable

import httpx

from tests.conftest import read_stored
from tests.rawhttp import RawPatch
from tests.server import GatewayProcess, mint_token
from tests.tushttp import create, error_code, head_offset, patch, send, upload_id


def _as(server: GatewayProcess, principal: str) -> GatewayProcess:
    """The same server, seen with a token of another principal."""
    other = GatewayProcess(server.data_dir, port=server.port, s3=server.s3)
    other.token = mint_token(server.data_dir, principal=principal)
    return other


def _tricklers(server: GatewayProcess, count: int) -> list[RawPatch]:
    """`count` PATCHes that announce 1 MiB each and send one byte so far."""
    patches = []
    for _ in range(count):
        url = create(server, 1 << 20)
        raw = RawPatch(server, url, 0, 1 << 20)
        raw.send(b"x")
        patches.append(raw)
    return patches


def test_trickling_patches_of_one_principal_leave_room_for_another(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """70 bodies trickling from one principal on default settings: another principal's
    upload goes through at once (before: all 64 writer slots taken, 503)."""
    server = gateway_factory(GATEWAY_ACQUIRE_TIMEOUT="3")
    other = _as(server, "other")
    tricklers = _tricklers(server, 70)
    try:
        time.sleep(0.5)  # every trickler is in its PATCH by now
        data = os.urandom(300_000)
        url = create(other, len(data))
        started = time.monotonic()
        response = patch(other, url, data, 0)
        assert response.status_code == 204, response.text
        assert time.monotonic() - started < 2.5
        assert read_stored(server.data_dir, upload_id(url)) == data
    finally:
        for raw in tricklers:
            raw.close()


def test_a_principal_holding_writers_cannot_take_the_reserved_ones(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(
        GATEWAY_MAX_WRITERS="6", GATEWAY_RESERVED_WRITERS="2", GATEWAY_ACQUIRE_TIMEOUT="1"
    )
    other = _as(server, "other")
    tricklers = _tricklers(server, 4)  # all the principal may hold
    try:
        time.sleep(0.3)
        url = create(server, 10)
        refused = patch(server, url, b"y" * 10, 0)
        assert refused.status_code == 429, refused.text
        assert error_code(refused) == "ERR_TOO_MANY_WRITERS"
        assert int(refused.headers["Retry-After"]) > 0
        data = os.urandom(100_000)
        url = create(other, len(data))
        assert patch(other, url, data, 0).status_code == 204
        assert read_stored(server.data_dir, upload_id(url)) == data
    finally:
        for raw in tricklers:
            raw.close()


def test_a_body_slower_than_the_minimum_rate_is_cut_and_what_came_is_saved(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A byte every 0.3 s is never silent for the network timeout, yet it is cut."""
    server = gateway_factory(GATEWAY_MIN_RECEIVE_RATE="1000", GATEWAY_RECEIVE_RATE_WINDOW="2")
    data = os.urandom(200_000)
    url = create(server, len(data))
    raw = RawPatch(server, url, 0, len(data))
    try:
        raw.send(data[:5000])
        sent = 5000
        started = time.monotonic()
        while time.monotonic() - started < 8:
            try:
                raw.send(data[sent : sent + 1])
            except OSError:
                break  # the server answered and closed
            sent += 1
            if raw.answered(0.3):
                break
        answered = time.monotonic() - started
        assert answered < 6, "the trickle was never cut"
        response = raw.read_response(5)
        assert response.status == 400
        assert json.loads(response.body)["code"] == "ERR_UPLOAD_INTERRUPTED"
    finally:
        raw.close()
    offset = head_offset(server, url)
    assert 5000 <= offset <= sent
    assert send(server, url, data, offset) == len(data)
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_a_principal_beyond_its_request_rate_gets_429_with_retry_after(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_REQUEST_RATE="0.5", GATEWAY_REQUEST_BURST="3")
    other = _as(server, "other")
    url = create(server, 10)  # 1
    statuses = [httpx.head(url, headers=server.auth).status_code for _ in range(3)]
    assert statuses[:2] == [200, 200] and statuses[2] == 429
    refused = httpx.head(url, headers=server.auth)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    posted = httpx.post(server.files_url, headers={**server.auth, "Upload-Length": "1"})
    assert posted.status_code == 429 and error_code(posted) == "ERR_RATE_LIMITED"
    assert httpx.head(create(other, 5), headers=other.auth).status_code == 200


def test_open_uploads_per_principal_are_limited(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_MAX_OPEN_UPLOADS="3")
    other = _as(server, "other")
    urls = [create(server, 4) for _ in range(3)]
    refused = httpx.post(server.files_url, headers={**server.auth, "Upload-Length": "4"})
    assert refused.status_code == 429, refused.text
    assert error_code(refused) == "ERR_QUOTA_EXCEEDED" and refused.headers["Retry-After"]
    create(other, 4)  # another principal has its own count
    assert patch(server, urls[0], b"done", 0).status_code == 204  # finished: not open
    create(server, 4)


def test_open_bytes_per_principal_are_limited(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_MAX_OPEN_BYTES="1000")
    create(server, 600)
    refused = httpx.post(server.files_url, headers={**server.auth, "Upload-Length": "401"})
    assert refused.status_code == 429 and error_code(refused) == "ERR_QUOTA_EXCEEDED"
    create(server, 400)


def _tail_pieces(server: GatewayProcess, uid: str) -> int:
    with sqlite3.connect(server.data_dir / "catalog.sqlite3") as db:
        row = db.execute("SELECT COUNT(*) FROM tail_pieces WHERE upload_id = ?", (uid,))
        return int(row.fetchone()[0])


def test_many_tiny_patches_keep_few_tail_pieces_and_the_bytes_exact(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536", GATEWAY_TAIL_MERGE_AFTER="8")
    data = os.urandom(3 * 65536 + 100)
    url = create(server, len(data))
    uid = upload_id(url)
    offset, most = 0, 0
    sizes = [1] * 30 + [65536 - 30 - 5000] + [7] * 20 + [40_000] + [1] * 25
    for size in sizes:
        offset = send(server, url, data, offset, [size])
        most = max(most, _tail_pieces(server, uid))
    assert most <= 8
    # A streamed body (no Content-Length) that ends mid-segment merges too.
    offset = send(server, url, data, offset, [1] * 12)
    streamed = httpx.patch(
        url,
        content=iter([data[offset : offset + 3000]]),
        headers={**server.auth, "Content-Type": "application/offset+octet-stream",
                 "Upload-Offset": str(offset)},
    )  # fmt: skip
    assert streamed.status_code == 204, streamed.text
    offset += 3000
    assert _tail_pieces(server, uid) <= 8
    assert send(server, url, data, offset) == len(data)
    assert _tail_pieces(server, uid) == 0
    assert read_stored(server.data_dir, uid) == data
