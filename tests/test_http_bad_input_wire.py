"""Hostile and malformed requests on the wire: bytes httpx would refuse or normalise
(dot segments, percent escapes, a Content-Length the body does not match, a body cut
short) sent over a raw socket to a real `gateway serve` process. Always a clear 4xx,
never a 500, nothing stored. The header checks are in test_http_bad_input.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import read_stored
from tests.rawhttp import raw_request, request_head
from tests.tushttp import (
    OCTET,
    PROBLEM,
    TUS_VERSION,
    Tus,
    checksum_header,
    upload_id,
)

# -- bodies that do not match their Content-Length -------------------------------------


def _patch_head(tus: Tus, url: str, offset: int, extra: dict[str, str]) -> bytes:
    path = url.removeprefix(tus.server.url)
    headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": str(offset), **extra}
    return request_head("PATCH", path, tus.server.port, headers)


@pytest.mark.parametrize("content_length", [11, 1 << 40, 2**63 - 1])
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_huge_content_length_is_413_before_the_body(
    tus: Tus, content_length: int, expect: bool
) -> None:
    url = tus.started(b"0123456789", 3)
    extra = {"Content-Length": str(content_length)}
    if expect:
        extra["Expect"] = "100-continue"
    # Only the head is sent: an answer proves the server did not wait for the body.
    response = raw_request(tus.server.port, _patch_head(tus, url, 3, extra), timeout=10)
    assert response.status == 413  # and not "100 Continue" first
    assert response.headers["content-type"] == PROBLEM
    assert b'"ERR_UPLOAD_SIZE_EXCEEDED"' in response.body
    assert response.headers["tus-resumable"] == TUS_VERSION
    assert response.elapsed < 5
    assert tus.offset(url) == 3


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("deferred", [False, True])
def test_huge_content_length_on_creation_is_413_before_the_body(tus: Tus, deferred: bool) -> None:
    length = {"Upload-Defer-Length": "1"} if deferred else {"Upload-Length": "10"}
    headers = {
        **tus.server.auth,
        **length,
        "Content-Type": OCTET,
        "Content-Length": str(1 << 40),  # over the default Tus-Max-Size of 64 GiB too
        "Expect": "100-continue",
    }
    head = request_head("POST", "/files/", tus.server.port, headers)
    response = raw_request(tus.server.port, head, timeout=10)
    assert response.status == 413
    assert b'"ERR_UPLOAD_SIZE_EXCEEDED"' in response.body
    assert response.elapsed < 5


@pytest.mark.parametrize("content_length", [str(10**30), "-1", "abc", "1.5"])
def test_unparsable_content_length_is_400(tus: Tus, content_length: str) -> None:
    # uvicorn's HTTP parser refuses these before the application sees them, so the
    # answer is uvicorn's plain-text 400, not problem+json; what matters is: 4xx, no 5xx,
    # nothing stored.
    url = tus.started(b"0123456789", 3)
    head = _patch_head(tus, url, 3, {"Content-Length": content_length})
    response = raw_request(tus.server.port, head, b"345", timeout=10)
    assert response.status == 400
    assert tus.offset(url) == 3


def test_body_longer_than_content_length_stores_only_what_was_declared(tus: Tus) -> None:
    url = tus.started(b"0123456789", 3)
    head = _patch_head(tus, url, 3, {"Content-Length": "2"})
    # The extra bytes are not a valid next request: the parser refuses them.
    response = raw_request(tus.server.port, head, b"34GARBAGE!", timeout=10)
    assert response.status in (204, 400)
    assert tus.offset(url) in (3, 5)  # never more than the declared 2 bytes


@pytest.mark.parametrize("with_checksum", [False, True])
def test_body_shorter_than_content_length_then_disconnect(tus: Tus, with_checksum: bool) -> None:
    data = b"0123456789"
    url = tus.started(data, 3)
    extra = {"Content-Length": "7"}
    if with_checksum:
        extra["Upload-Checksum"] = checksum_header("sha1", data[3:])
    with socket.create_connection(("127.0.0.1", tus.server.port), timeout=10) as sock:
        sock.sendall(_patch_head(tus, url, 3, extra) + data[3:6])
        time.sleep(0.2)
    # tus: store as much as possible; with a checksum nothing unverified may be kept.
    expected = 3 if with_checksum else 6
    deadline = time.monotonic() + 10
    while tus.offset(url) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tus.offset(url) == expected
    # The upload is free again: the rest can be sent and reads back exactly.
    tus.send(url, data[expected:], expected, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


# -- ids and paths ----------------------------------------------------------------------

TRAVERSALS = [
    "..%2Fetc",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "a.b",
    "%2e%2e",
    "..",
    ".",
    "%2e",
    "%252e%252e",
    "a" * 200,
    "A" * 33,
    "A" * 21,
    "A" * 22 + ".",
    "A" * 22 + "%00",
    "a%00b",
    "a%2Fb",
    "%2F",
    "%5C..%5Cetc",
    "..%5C..%5Cetc",
    "~root",
    "%7Eroot",
    "catalog.sqlite3",
    "keyring.json",
    "objects",
]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("target", TRAVERSALS)
def test_ids_with_separators_or_dots_are_404(tus: Tus, method: str, target: str) -> None:
    headers = {
        **tus.server.auth,
        "Content-Type": OCTET,
        "Upload-Offset": "0",
        "Upload-Length": "1",
        "Content-Length": "1",
    }
    head = request_head(method, f"/files/{target}", tus.server.port, headers)
    response = raw_request(tus.server.port, head, b"a")
    assert response.status == 404, response
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["tus-resumable"] == TUS_VERSION
    if method != "HEAD":
        # Either the router found no route or the id failed its shape check.
        assert b'"ERR_UPLOAD_NOT_FOUND"' in response.body or b'"ERR_NOT_FOUND"' in response.body
    assert "upload-offset" not in response.headers


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("target", ["/files/../files/", "/files/./", "/files/%2e%2e/files/"])
def test_dot_segments_in_the_collection_path_are_404(tus: Tus, target: str) -> None:
    headers = {**tus.server.auth, "Upload-Length": "1"}
    response = raw_request(tus.server.port, request_head("POST", target, tus.server.port, headers))
    assert response.status == 404
    assert response.headers["content-type"] == PROBLEM


def test_the_real_upload_is_untouched_by_lookalike_ids(tus: Tus) -> None:
    url = tus.started(b"0123456789", 4)
    uid = upload_id(url)
    lookalikes = [uid + ".", uid + "%2F", "..%2F" + uid, uid + "A" * 11]
    if uid.swapcase() != uid:
        lookalikes.append(uid.swapcase())
    for lookalike in lookalikes:
        head = request_head("DELETE", f"/files/{lookalike}", tus.server.port, tus.server.auth)
        assert raw_request(tus.server.port, head).status == 404
    assert tus.offset(url) == 4
