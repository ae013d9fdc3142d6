"""tus 1.0.0 over real HTTP: every rule of the protocol and its extensions, table-driven.

Black-box: a real `gateway serve` process on a loopback port, driven with httpx.
Each response is checked for Tus-Resumable (see tests/tushttp.py); errors must be
RFC 9457 problem+json with the stable code from gateway/errors.py.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.catalog.base import UploadState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.reader import NotReadable
from tests.conftest import read_stored
from tests.server import GatewayProcess, mint_token
from tests.tushttp import (
    OCTET,
    PROBLEM,
    TUS_VERSION,
    UNKNOWN_ID,
    Tus,
    assert_http_date,
    assert_problem,
    b64,
    checksum_header,
    chunked,
    object_dirs,
    start_server,
    upload_id,
)

DEFAULT_TTL = 7 * 24 * 3600
DEFAULT_MAX_SIZE = 64 << 30
SMALL_MAX_SIZE = 1000
SEGMENT_64K = 64 * 1024
EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
    "concatenation-unfinished",
}
ALGORITHMS = ("sha1", "sha256", "sha512", "md5", "crc32", "crc32c")


# -- servers and clients ----------------------------------------------------------------


@pytest.fixture(scope="module")
def token_for(server: GatewayProcess) -> Callable[[str, str], str]:
    """Mint (once) a bearer token for another principal on the default server."""
    return functools.cache(lambda principal, tenant: mint_token(server.data_dir, principal, tenant))


@pytest.fixture(scope="module")
def small_tus(tmp_path_factory: pytest.TempPathFactory, client: httpx.Client) -> Iterator[Tus]:
    """A server with Tus-Max-Size 1000."""
    proc = start_server(tmp_path_factory, "small", {"GATEWAY_MAX_SIZE": str(SMALL_MAX_SIZE)})
    try:
        yield Tus(proc, client)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def seg_tus(tmp_path_factory: pytest.TempPathFactory, client: httpx.Client) -> Iterator[Tus]:
    """A server with the smallest segment size, so modest bodies cross many records."""
    proc = start_server(tmp_path_factory, "segments", {"GATEWAY_SEGMENT_SIZE": str(SEGMENT_64K)})
    try:
        yield Tus(proc, client)
    finally:
        proc.stop()


@pytest.fixture(params=["default-segments", "64k-segments"])
def any_tus(request: pytest.FixtureRequest) -> Tus:
    name = "tus" if request.param == "default-segments" else "seg_tus"
    result: Tus = request.getfixturevalue(name)
    return result


def _assert_nothing_new(tus: Tus, before: set[str]) -> None:
    assert object_dirs(tus.data_dir) == before, "a refused request left an upload behind"


# -- OPTIONS ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/files/", "/files", f"/files/{UNKNOWN_ID}"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Tus-Resumable": "0.2.2"},  # the server MUST ignore Tus-Resumable on OPTIONS
        {"Authorization": "Bearer not-a-token"},  # and needs no credentials
    ],
    ids=["bare", "other-version", "bad-token"],
)
def test_options_advertises_the_server(
    tus: Tus, client: httpx.Client, path: str, headers: dict[str, str]
) -> None:
    response = client.options(tus.url(path), headers=headers)
    assert response.status_code == 204
    h = response.headers
    assert h["Tus-Version"] == TUS_VERSION
    assert set(h["Tus-Extension"].split(",")) == EXTENSIONS
    assert h["Tus-Max-Size"] == str(DEFAULT_MAX_SIZE)
    algorithms = h["Tus-Checksum-Algorithm"].split(",")
    assert {"sha1", "sha256", "md5", "crc32"} <= set(algorithms)
    assert all(a == a.lower() and a.isascii() for a in algorithms)
    assert "Tus-Resumable" not in h
    assert response.content == b""


def test_options_reports_a_configured_max_size(small_tus: Tus, client: httpx.Client) -> None:
    response = client.options(small_tus.server.files_url)
    assert response.status_code == 204
    assert response.headers["Tus-Max-Size"] == str(SMALL_MAX_SIZE)


# -- Tus-Resumable and authentication ---------------------------------------------------

BAD_VERSIONS: list[list[tuple[str, str]]] = [
    [],
    [("Tus-Resumable", "0.2.2")],
    [("Tus-Resumable", "1.0")],
    [("Tus-Resumable", "")],
    [("Tus-Resumable", "1.0.0, 1.0.0")],
    [("Tus-Resumable", "1.0.0"), ("Tus-Resumable", "1.0.0")],
]
VERSION_IDS = ["missing", "0.2.2", "1.0", "empty", "folded", "twice"]


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("version", BAD_VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("authorized", [True, False], ids=["auth", "no-auth"])
def test_unsupported_version_is_412_and_not_processed(
    tus: Tus, client: httpx.Client, method: str, version: list[tuple[str, str]], authorized: bool
) -> None:
    url = tus.started(b"0123456789", 4)
    before = object_dirs(tus.data_dir)
    headers: list[tuple[str, str]] = [*version, ("Content-Type", OCTET)]
    if authorized:
        headers.append(("Authorization", f"Bearer {tus.server.token}"))
    headers += [("Upload-Offset", "4"), ("Upload-Length", "10")]
    target = tus.server.files_url if method == "POST" else url
    response = client.request(method, target, headers=headers, content=b"456")
    # The version check comes before authentication: 412, never 401.
    assert_problem(response, 412, "ERR_UNSUPPORTED_VERSION")
    assert response.headers["Tus-Version"] == TUS_VERSION
    assert tus.offset(url) == 4
    _assert_nothing_new(tus, before)


AUTH_VARIANTS: list[list[tuple[str, str]]] = [
    [],
    [("Authorization", "Bearer gwt_not-a-real-token")],
    [("Authorization", "Bearer")],
    [("Authorization", "Basic YWRtaW46YWRtaW4=")],
    [("Authorization", "gwt_no-scheme")],
    [("Authorization", "Bearer " + "x" * 300)],
]
AUTH_IDS = ["missing", "wrong-token", "empty-token", "basic", "no-scheme", "long-token"]


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("auth", AUTH_VARIANTS, ids=AUTH_IDS)
def test_bad_credentials_are_401(
    tus: Tus, client: httpx.Client, method: str, auth: list[tuple[str, str]]
) -> None:
    url = tus.started(b"0123456789", 4)
    before = object_dirs(tus.data_dir)
    headers = [
        ("Tus-Resumable", TUS_VERSION),
        *auth,
        ("Content-Type", OCTET),
        ("Upload-Offset", "4"),
        ("Upload-Length", "10"),
    ]
    target = tus.server.files_url if method == "POST" else url
    response = client.request(method, target, headers=headers, content=b"456")
    assert_problem(response, 401, "ERR_UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert tus.offset(url) == 4
    _assert_nothing_new(tus, before)


def test_two_authorization_lines_are_401(tus: Tus, client: httpx.Client) -> None:
    good = f"Bearer {tus.server.token}"
    headers = [("Tus-Resumable", TUS_VERSION), ("Authorization", good), ("Authorization", good)]
    response = client.post(tus.server.files_url, headers=[*headers, ("Upload-Length", "1")])
    assert_problem(response, 401, "ERR_UNAUTHORIZED")


# -- POST (creation) --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/files/", "/files"])
def test_post_creates_an_upload(tus: Tus, client: httpx.Client, path: str) -> None:
    response = client.post(tus.url(path), headers={**tus.server.auth, "Upload-Length": "100"})
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    # Absolute, on this server, under the tus base path.
    assert location.startswith(tus.server.files_url)
    upload_id(location)
    assert_http_date(response.headers["Upload-Expires"], near=time.time() + DEFAULT_TTL)
    assert "Upload-Offset" not in response.headers  # no body was sent
    head = tus.head(location)
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "100"


def test_post_ids_are_unique(tus: Tus) -> None:
    urls = {tus.create(1) for _ in range(20)}
    assert len(urls) == 20


def test_zero_length_upload_is_complete_at_once(tus: Tus) -> None:
    url = tus.create(0)
    head = tus.head(url)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == "0"
    assert "Upload-Expires" not in head.headers  # complete uploads do not expire
    assert read_stored(tus.data_dir, upload_id(url)) == b""
    # An empty PATCH at offset 0 is a harmless no-op on a complete upload.
    response = tus.patch(url, b"", 0)
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Upload-Length": str(SMALL_MAX_SIZE + 1)}, 413, "ERR_MAX_SIZE_EXCEEDED"),
        ({"Upload-Length": str(10**15)}, 413, "ERR_MAX_SIZE_EXCEEDED"),
        ({"Upload-Length": str(2**63 - 1)}, 413, "ERR_MAX_SIZE_EXCEEDED"),
        ({"Upload-Length": str(SMALL_MAX_SIZE)}, 201, None),
        ({"Upload-Defer-Length": "1"}, 201, None),
    ],
    ids=["max+1", "1e15", "int64-max", "max", "deferred"],
)
def test_post_against_tus_max_size(
    small_tus: Tus, headers: dict[str, str], status: int, code: str | None
) -> None:
    before = object_dirs(small_tus.data_dir)
    response = small_tus.post(headers)
    if code is None:
        assert response.status_code == status, response.text
        return
    assert_problem(response, status, code)
    assert "Location" not in response.headers
    _assert_nothing_new(small_tus, before)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "ERR_INVALID_UPLOAD_LENGTH"),
        ({"Upload-Metadata": "a YQ=="}, "ERR_INVALID_UPLOAD_LENGTH"),
        ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, "ERR_AMBIGUOUS_UPLOAD_LENGTH"),
        ({"Upload-Length": "0", "Upload-Defer-Length": "1"}, "ERR_AMBIGUOUS_UPLOAD_LENGTH"),
        ({"Upload-Defer-Length": "0"}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ({"Upload-Defer-Length": "2"}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ({"Upload-Defer-Length": "true"}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ({"Upload-Defer-Length": "01"}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ({"Upload-Defer-Length": ""}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ({"Upload-Length": "5", "Upload-Defer-Length": "0"}, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
    ],
    ids=[
        "neither",
        "neither-with-metadata",
        "both",
        "both-zero",
        "defer-0",
        "defer-2",
        "defer-true",
        "defer-01",
        "defer-empty",
        "length-and-defer-0",
    ],
)
def test_post_length_rules(tus: Tus, headers: dict[str, str], code: str) -> None:
    before = object_dirs(tus.data_dir)
    response = tus.post(headers)
    assert_problem(response, 400, code)
    assert "Location" not in response.headers
    _assert_nothing_new(tus, before)


# -- creation-with-upload ---------------------------------------------------------------


@dataclass(frozen=True)
class WithUpload:
    length: int | None  # None: deferred
    body: int
    checksum: str | None = None


@pytest.mark.parametrize(
    "case",
    [
        WithUpload(100, 0),
        WithUpload(100, 1),
        WithUpload(100, 99),
        WithUpload(100, 100),
        WithUpload(None, 50),
        WithUpload(200_000, 200_000, "sha256"),
        WithUpload(200_000, 70_000, "crc32c"),
    ],
    ids=lambda c: f"len={c.length}-body={c.body}-sum={c.checksum}",
)
def test_creation_with_upload(any_tus: Tus, case: WithUpload) -> None:
    tus = any_tus
    data = os.urandom(case.length if case.length is not None else case.body)
    body = data[: case.body]
    headers = {"Content-Type": OCTET}
    if case.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(case.length)
    if case.checksum:
        headers["Upload-Checksum"] = checksum_header(case.checksum, body)
    response = tus.post(headers, content=body)
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(case.body)
    url = response.headers["Location"]
    head = tus.head(url)
    assert head.headers["Upload-Offset"] == str(case.body)
    if case.length is None:
        assert head.headers["Upload-Defer-Length"] == "1"
        return
    if case.body < case.length:
        assert_http_date(response.headers["Upload-Expires"], near=time.time() + DEFAULT_TTL)
        tus.send(url, data[case.body :], case.body, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


@pytest.mark.parametrize(
    ("content_type", "framing"),
    [("text/plain", "content-length"), ("application/json", "chunked"), (None, "content-length")],
)
def test_creation_with_a_body_of_another_type_is_415(
    tus: Tus, content_type: str | None, framing: str
) -> None:
    before = object_dirs(tus.data_dir)
    headers = {"Upload-Length": "10"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = b"hello" if framing == "content-length" else chunked(b"hello")
    response = tus.post(headers, content=body)
    assert_problem(response, 415, "ERR_INVALID_CONTENT_TYPE")
    _assert_nothing_new(tus, before)


def test_creation_without_a_body_may_name_any_type(tus: Tus) -> None:
    response = tus.post({"Upload-Length": "10", "Content-Type": "text/plain"})
    assert response.status_code == 201, response.text
    assert tus.offset(response.headers["Location"]) == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(("length", "body"), [(10, 11), (0, 1), (100, 5000)])
def test_creation_with_upload_longer_than_length_is_413(
    tus: Tus, framing: str, length: int, body: int
) -> None:
    before = object_dirs(tus.data_dir)
    data = os.urandom(body)
    content = data if framing == "content-length" else chunked(data, 3)
    response = tus.post({"Upload-Length": str(length), "Content-Type": OCTET}, content=content)
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    if "Location" in response.headers:
        # The upload was created before the body showed its size: none of it is kept.
        assert framing == "chunked"
        assert tus.offset(response.headers["Location"]) == 0
    else:
        _assert_nothing_new(tus, before)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_creation_with_upload_deferred_beyond_max_size_is_413(small_tus: Tus, framing: str) -> None:
    before = object_dirs(small_tus.data_dir)
    data = os.urandom(SMALL_MAX_SIZE + 1)
    content = data if framing == "content-length" else chunked(data, 100)
    response = small_tus.post({"Upload-Defer-Length": "1", "Content-Type": OCTET}, content=content)
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    if "Location" in response.headers:
        assert framing == "chunked"
        assert small_tus.offset(response.headers["Location"]) == 0
    else:
        _assert_nothing_new(small_tus, before)


# -- HEAD -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "",
        "filename dGVzdC5kY20=",
        "filename dGVzdC5kY20=,modality Q1Q=,is_confidential",
        "empty ,k2 YQ==",
        "a-b_c.d/e YWJj",
        "zero AA==,ten MDEyMzQ1Njc4OQ==",
    ],
    ids=["none", "empty", "one", "three-with-bare-key", "empty-value", "punct-key", "binary"],
)
def test_head_reports_the_upload(tus: Tus, metadata: str | None) -> None:
    url = tus.create(10, metadata=metadata)
    assert tus.patch(url, b"abc", 0).status_code == 204
    head = tus.head(url)
    assert head.status_code == 200
    h = head.headers
    assert h["Upload-Offset"] == "3"
    assert h["Upload-Length"] == "10"
    assert "Upload-Defer-Length" not in h
    assert h["Cache-Control"] == "no-store"
    assert "Upload-Concat" not in h
    assert_http_date(h["Upload-Expires"], near=time.time() + DEFAULT_TTL)
    if metadata is None:
        assert "Upload-Metadata" not in h
    else:
        assert h["Upload-Metadata"] == metadata  # exactly as sent
    assert head.content == b""


def test_head_on_a_deferred_upload(tus: Tus) -> None:
    url = tus.create(None)
    h = tus.head(url).headers
    assert h["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in h
    assert h["Upload-Offset"] == "0"
    assert h["Cache-Control"] == "no-store"


def test_head_on_a_complete_upload(tus: Tus) -> None:
    url = tus.upload(b"x" * 10)
    h = tus.head(url).headers
    assert (h["Upload-Offset"], h["Upload-Length"]) == ("10", "10")
    assert "Upload-Expires" not in h


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("uid", [UNKNOWN_ID, "A" * 32, "short"], ids=["22", "32", "short"])
def test_unknown_upload_is_404(tus: Tus, client: httpx.Client, method: str, uid: str) -> None:
    headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": "0"}
    response = client.request(method, tus.url(f"/files/{uid}"), headers=headers, content=b"a")
    assert_problem(response, 404, "ERR_UPLOAD_NOT_FOUND")
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize(
    ("principal", "tenant"),
    [("other", "default"), ("admin", "other-tenant"), ("other", "other-tenant")],
)
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
def test_another_principals_upload_is_404(
    tus: Tus,
    client: httpx.Client,
    token_for: Callable[[str, str], str],
    principal: str,
    tenant: str,
    method: str,
) -> None:
    url = tus.create(10)
    assert tus.patch(url, b"abcd", 0).status_code == 204
    token = token_for(principal, tenant)
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Authorization": f"Bearer {token}",
        "Content-Type": OCTET,
        "Upload-Offset": "4",
    }
    response = client.request(method, url, headers=headers, content=b"efgh")
    assert_problem(response, 404, "ERR_UPLOAD_NOT_FOUND")
    # The new principal's token works at once for its own uploads.
    mine = client.post(tus.server.files_url, headers={**headers, "Upload-Length": "1"})
    assert mine.status_code == 201
    # The owner's upload is untouched.
    assert tus.offset(url) == 4


# -- PATCH ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/octet-stream",
        "text/plain",
        "application/offset+octet-streams",
        "application/offset",
        "multipart/form-data; boundary=x",
        "application/partial-upload",
    ],
)
def test_patch_needs_offset_octet_stream(tus: Tus, content_type: str | None) -> None:
    url = tus.create(10)
    headers = {"Content-Type": content_type} if content_type else {}
    response = tus.client.patch(
        url, content=b"abc", headers={**tus.server.auth, "Upload-Offset": "0", **headers}
    )
    assert_problem(response, 415, "ERR_INVALID_CONTENT_TYPE")
    assert tus.offset(url) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/offset+octet-stream", "Application/Offset+Octet-Stream", f"{OCTET}; x=1"],
)
def test_patch_content_type_is_case_insensitive(tus: Tus, content_type: str) -> None:
    url = tus.create(3)
    response = tus.patch(url, b"abc", 0, {"Content-Type": content_type})
    assert response.status_code == 204, response.text


@pytest.mark.parametrize(
    ("done", "sent_offset"),
    [(0, 1), (0, 10), (5, 0), (5, 4), (5, 6), (5, 10)],
)
def test_patch_at_the_wrong_offset_is_409(tus: Tus, done: int, sent_offset: int) -> None:
    data = os.urandom(10)
    url = tus.create(10)
    if done:
        tus.send(url, data[:done], 0, None)
    response = tus.patch(url, b"z", sent_offset)
    assert_problem(response, 409, "ERR_MISMATCHED_OFFSET")
    assert response.headers["Upload-Offset"] == str(done)
    assert tus.offset(url) == done
    tus.send(url, data[done:], done, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


def test_patch_without_upload_offset_is_400(tus: Tus) -> None:
    url = tus.create(10)
    response = tus.client.patch(
        url, content=b"abc", headers={**tus.server.auth, "Content-Type": OCTET}
    )
    assert_problem(response, 400, "ERR_INVALID_OFFSET")
    assert tus.offset(url) == 0


def test_patch_success_reports_offset_and_expiry(tus: Tus) -> None:
    url = tus.create(10)
    response = tus.patch(url, b"abcd", 0)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Upload-Offset"] == "4"
    assert_http_date(response.headers["Upload-Expires"], near=time.time() + DEFAULT_TTL)
    done = tus.patch(url, b"efghij", 4)
    assert done.status_code == 204
    assert done.headers["Upload-Offset"] == "10"


MB = 1 << 20


@pytest.mark.parametrize(
    "chunks",
    [
        [1, 65537, 3 * MB + 7],
        [3 * MB + 7, 65537, 1],
        [1] * 5 + [65535, 65536, 65537],
        [0, 100, 0, 100],
        [SEGMENT_64K * 3, 1, SEGMENT_64K - 1, SEGMENT_64K + 1],
    ],
    ids=["grow", "shrink", "bytes-then-boundaries", "empty-patches", "segment-edges"],
)
def test_patches_of_odd_sizes_read_back_exactly(any_tus: Tus, chunks: list[int]) -> None:
    data = os.urandom(sum(chunks))
    url = any_tus.upload(data, chunks)
    assert read_stored(any_tus.data_dir, upload_id(url)) == data


def test_deferred_length_is_set_by_a_later_patch(tus: Tus) -> None:
    data = os.urandom(100_000)
    url = tus.create(None)
    assert tus.patch(url, data[:10], 0).status_code == 204
    assert tus.head(url).headers["Upload-Defer-Length"] == "1"
    # Upload-Length on its own, with an empty body, only declares the length.
    response = tus.patch(url, b"", 10, {"Upload-Length": str(len(data))})
    assert response.status_code == 204, response.text
    h = tus.head(url).headers
    assert h["Upload-Length"] == str(len(data))
    assert "Upload-Defer-Length" not in h
    # Repeating the same length is fine.
    response = tus.patch(url, data[10:], 10, {"Upload-Length": str(len(data))})
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    assert read_stored(tus.data_dir, upload_id(url)) == data


def test_deferred_length_set_with_the_last_bytes(tus: Tus) -> None:
    data = os.urandom(70_000)
    url = tus.create(None)
    tus.send(url, data[:30_000], 0, [1, 29_999])
    response = tus.patch(url, data[30_000:], 30_000, {"Upload-Length": str(len(data))})
    assert response.status_code == 204, response.text
    assert read_stored(tus.data_dir, upload_id(url)) == data


@pytest.mark.parametrize(
    ("length", "done", "new_length", "code"),
    [
        (10, 0, 11, "ERR_UPLOAD_LENGTH_ALREADY_SET"),
        (10, 4, 9, "ERR_UPLOAD_LENGTH_ALREADY_SET"),
        (10, 4, 0, "ERR_UPLOAD_LENGTH_ALREADY_SET"),
        (None, 4, 3, "ERR_INVALID_UPLOAD_LENGTH"),  # below what is already there
    ],
)
def test_patch_cannot_change_the_length(
    tus: Tus, length: int | None, done: int, new_length: int, code: str
) -> None:
    url = tus.create(length)
    if done:
        tus.send(url, b"x" * done, 0, None)
    response = tus.patch(url, b"", done, {"Upload-Length": str(new_length)})
    assert_problem(response, 400, code)
    h = tus.head(url).headers
    assert h["Upload-Offset"] == str(done)
    assert h.get("Upload-Length") == (None if length is None else str(length))


def test_deferred_length_once_set_cannot_change(tus: Tus) -> None:
    url = tus.create(None)
    assert tus.patch(url, b"ab", 0, {"Upload-Length": "5"}).status_code == 204
    response = tus.patch(url, b"", 2, {"Upload-Length": "6"})
    assert_problem(response, 400, "ERR_UPLOAD_LENGTH_ALREADY_SET")
    assert tus.head(url).headers["Upload-Length"] == "5"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(("length", "done", "extra"), [(10, 0, 11), (10, 5, 6), (10, 9, 5000)])
def test_patch_beyond_the_length_is_413(
    tus: Tus, framing: str, length: int, done: int, extra: int
) -> None:
    data = os.urandom(length)
    url = tus.create(length)
    if done:
        tus.send(url, data[:done], 0, None)
    body = os.urandom(extra)
    content = body if framing == "content-length" else chunked(body, 2)
    response = tus.patch(url, content, done)
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    assert tus.offset(url) == done
    tus.send(url, data[done:], done, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_deferred_patch_beyond_max_size_is_413(small_tus: Tus, framing: str) -> None:
    url = small_tus.create(None)
    body = os.urandom(SMALL_MAX_SIZE + 1)
    content = body if framing == "content-length" else chunked(body, 100)
    response = small_tus.patch(url, content, 0)
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    assert small_tus.offset(url) == 0


def test_deferred_length_above_max_size_is_413(small_tus: Tus) -> None:
    url = small_tus.create(None)
    response = small_tus.patch(url, b"", 0, {"Upload-Length": str(SMALL_MAX_SIZE + 1)})
    assert_problem(response, 413, "ERR_MAX_SIZE_EXCEEDED")
    assert small_tus.head(url).headers["Upload-Defer-Length"] == "1"


# -- checksum ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_correct_checksum_is_accepted(tus: Tus, algorithm: str) -> None:
    data = os.urandom(5000)
    url = tus.create(len(data))
    for start, end in ((0, 1), (1, 4097), (4097, 5000)):
        piece = data[start:end]
        response = tus.patch(
            url, piece, start, {"Upload-Checksum": checksum_header(algorithm, piece)}
        )
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(end)
    assert read_stored(tus.data_dir, upload_id(url)) == data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("done", "chunk"),
    [(0, 100), (1000, 3000), (SEGMENT_64K - 10, 3 * SEGMENT_64K + 20)],
    ids=["first", "tail", "across-segments"],
)
def test_checksum_mismatch_is_460_and_records_nothing(
    seg_tus: Tus, algorithm: str, done: int, chunk: int
) -> None:
    tus = seg_tus
    data = os.urandom(done + chunk + 7)
    url = tus.create(len(data))
    if done:
        tus.send(url, data[:done], 0, [1, done - 1])
    good = data[done : done + chunk]
    bad = os.urandom(chunk)  # same size, other bytes: they must leave no trace
    response = tus.patch(url, bad, done, {"Upload-Checksum": checksum_header(algorithm, good)})
    assert_problem(response, 460, "ERR_CHECKSUM_MISMATCH")
    assert tus.offset(url) == done
    response = tus.patch(url, good, done, {"Upload-Checksum": checksum_header(algorithm, good)})
    assert response.status_code == 204, response.text
    tus.send(url, data[done + chunk :], done + chunk, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


def test_checksum_mismatch_on_the_last_bytes_does_not_complete(tus: Tus) -> None:
    data = os.urandom(1000)
    url = tus.create(len(data))
    wrong = checksum_header("sha1", b"something else")
    response = tus.patch(url, data, 0, {"Upload-Checksum": wrong})
    assert_problem(response, 460, "ERR_CHECKSUM_MISMATCH")
    assert tus.offset(url) == 0
    response = tus.patch(url, data, 0, {"Upload-Checksum": checksum_header("sha1", data)})
    assert response.status_code == 204
    assert read_stored(tus.data_dir, upload_id(url)) == data


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("sha3 " + b64(b"x" * 32), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("SHA1 " + b64(b"x" * 20), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("blake2b " + b64(b"x" * 64), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("sha1 !!!!!!!!!!!!!!!!!!!!!!!!!!!=", "ERR_INVALID_CHECKSUM"),
        ("sha1 " + b64(b"x" * 20).rstrip("="), "ERR_INVALID_CHECKSUM"),
        ("sha1", "ERR_INVALID_CHECKSUM"),
        ("sha1  " + b64(b"x" * 20), "ERR_INVALID_CHECKSUM"),
        ("crc32 " + b64(b"x" * 4).replace("=", "-"), "ERR_INVALID_CHECKSUM"),
    ],
    ids=[
        "sha3",
        "uppercase",
        "blake2b",
        "not-base64",
        "unpadded",
        "no-digest",
        "two-spaces",
        "base64url",
    ],
)
def test_bad_checksum_header_is_400(tus: Tus, value: str, code: str) -> None:
    url = tus.create(10)
    assert tus.patch(url, b"ab", 0).status_code == 204
    response = tus.patch(url, b"cde", 2, {"Upload-Checksum": value})
    assert_problem(response, 400, code)
    assert tus.offset(url) == 2


@pytest.mark.parametrize(
    "value",
    [
        "sha1 " + b64(b"x" * 19),
        "sha1 " + b64(b"x" * 32),
        "crc32 " + b64(b"x" * 3),
        "sha1 " + "A" * 10_000,
    ],
    ids=["short", "long", "crc32-short", "huge"],
)
def test_digest_of_the_wrong_length_is_a_mismatch(tus: Tus, value: str) -> None:
    # It can never match the body: 460 as for any other mismatch, the offset unchanged.
    url = tus.create(10)
    assert tus.patch(url, b"ab", 0).status_code == 204
    response = tus.patch(url, b"cde", 2, {"Upload-Checksum": value})
    assert_problem(response, 460, "ERR_CHECKSUM_MISMATCH")
    assert tus.offset(url) == 2
    before = object_dirs(tus.data_dir)
    headers = {"Upload-Length": "3", "Content-Type": OCTET, "Upload-Checksum": value}
    assert_problem(tus.post(headers, content=b"abc"), 460, "ERR_CHECKSUM_MISMATCH")
    _assert_nothing_new(tus, before)


def test_bad_checksum_on_creation_with_upload_is_400(tus: Tus) -> None:
    before = object_dirs(tus.data_dir)
    headers = {"Upload-Length": "3", "Content-Type": OCTET, "Upload-Checksum": "sha3 AAAA"}
    response = tus.post(headers, content=b"abc")
    assert_problem(response, 400, "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
    _assert_nothing_new(tus, before)


# -- termination ------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["fresh", "partly-written", "complete", "deferred", "partial"])
def test_delete_removes_the_upload(tus: Tus, state: str) -> None:
    data = os.urandom(20_000)
    if state == "fresh":
        url = tus.create(len(data))
    elif state == "partly-written":
        url = tus.create(len(data))
        tus.send(url, data[:15_000], 0, [1, 14_999])
    elif state == "complete":
        url = tus.upload(data)
    elif state == "deferred":
        url = tus.create(None)
        tus.send(url, data[:5], 0, None)
    else:
        url = tus.upload(data, headers={"Upload-Concat": "partial"})
    uid = upload_id(url)
    assert uid in object_dirs(tus.data_dir)
    response = tus.delete(url)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert not (tus.data_dir / "objects" / uid).exists()
    assert_problem(tus.head(url), 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(tus.patch(url, b"a", 0), 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(tus.delete(url), 404, "ERR_UPLOAD_NOT_FOUND")


# -- concatenation ----------------------------------------------------------------------


def _partial(tus: Tus, data: bytes, metadata: str | None = None) -> str:
    return tus.upload(data, headers={"Upload-Concat": "partial"}, metadata=metadata)


@pytest.mark.parametrize("form", ["absolute", "relative", "mixed"])
@pytest.mark.parametrize("sizes", [(10, 20), (0, 5), (70_000, 1), (1, 1, 1)])
def test_concatenation(any_tus: Tus, form: str, sizes: tuple[int, ...]) -> None:
    tus = any_tus
    parts = [os.urandom(n) for n in sizes]
    urls = [_partial(tus, p, metadata=f"part {b64(str(i).encode())}") for i, p in enumerate(parts)]
    for url in urls:
        h = tus.head(url).headers
        assert h["Upload-Concat"] == "partial"
        assert h["Upload-Offset"] == h["Upload-Length"]
    listed = []
    for i, url in enumerate(urls):
        relative = "/files/" + upload_id(url)
        use_relative = form == "relative" or (form == "mixed" and i % 2 == 1)
        listed.append(relative if use_relative else url)
    concat = "final;" + " ".join(listed)
    response = tus.post({"Upload-Concat": concat})
    assert response.status_code == 201, response.text
    final = response.headers["Location"]
    h = tus.head(final).headers
    assert h["Upload-Concat"] == concat  # as received
    total = str(sum(sizes))
    assert h["Upload-Offset"] == total
    assert h["Upload-Length"] == total
    assert "Upload-Metadata" not in h  # the partials' metadata is not carried over
    assert read_stored(tus.data_dir, upload_id(final)) == b"".join(parts)


def test_final_upload_has_its_own_metadata_and_partials_are_reusable(tus: Tus) -> None:
    a, b = os.urandom(100), os.urandom(200)
    url_a = _partial(tus, a, metadata="name YQ==")
    url_b = _partial(tus, b)
    metadata = "filename c3R1ZHkuZGNt"
    # One partial twice in one final is refused (each would be read again and again).
    repeated = tus.post({"Upload-Concat": f"final;{url_a} {url_b} {url_a}"})
    assert_problem(repeated, 400, "ERR_INVALID_CONCAT")
    concat = f"final;{url_a} {url_b}"
    response = tus.post({"Upload-Concat": concat, "Upload-Metadata": metadata})
    assert response.status_code == 201, response.text
    final = response.headers["Location"]
    h = tus.head(final).headers
    assert h["Upload-Metadata"] == metadata
    assert read_stored(tus.data_dir, upload_id(final)) == a + b
    # A second final from the same partials, in another order.
    again = tus.post({"Upload-Concat": f"final;{url_b} {url_a}"})
    assert again.status_code == 201
    assert read_stored(tus.data_dir, upload_id(again.headers["Location"])) == b + a
    # The partials themselves are still there and unchanged.
    assert tus.head(url_a).headers["Upload-Metadata"] == "name YQ=="


def test_deleting_a_partial_keeps_the_finals_built_from_it(tus: Tus) -> None:
    """A final upload copies no bytes: it reads its partials' objects. Terminating a
    partial must end the partial's own life (404 for it) without destroying bytes a
    finished final still serves, or that final turns unreadable while HEAD calls it
    complete."""
    a, b = os.urandom(100), os.urandom(200)
    url_a, url_b = _partial(tus, a), _partial(tus, b)
    final = tus.post({"Upload-Concat": f"final;{url_a} {url_b}"}).headers["Location"]
    assert tus.delete(url_a).status_code == 204
    assert_problem(tus.head(url_a), 404, "ERR_UPLOAD_NOT_FOUND")
    head = tus.head(final)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "300"
    try:
        stored = read_stored(tus.data_dir, upload_id(final))
    except NotReadable as exc:
        pytest.fail(
            "BUG in gateway/removal.py (Removal.terminate/_remove): DELETE of a partial "
            "upload shreds its objects and key although a final upload still lists it in "
            f"`partials`; the final is now unreadable ({exc}) while HEAD reports it complete"
        )
    assert stored == a + b


@pytest.mark.parametrize("with_body", [False, True])
def test_patch_to_a_final_upload_is_403(tus: Tus, with_body: bool) -> None:
    parts = [_partial(tus, b"abc"), _partial(tus, b"def")]
    final = tus.post({"Upload-Concat": "final;" + " ".join(parts)}).headers["Location"]
    body = b"x" if with_body else b""
    response = tus.patch(final, body, 6)
    assert_problem(response, 403, "ERR_MODIFY_FINAL")
    response = tus.patch(final, body, 0)
    assert_problem(response, 403, "ERR_MODIFY_FINAL")
    h = tus.head(final).headers
    assert h["Upload-Offset"] == h["Upload-Length"] == "6"
    assert read_stored(tus.data_dir, upload_id(final)) == b"abcdef"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"Upload-Length": "6"}, "ERR_INVALID_UPLOAD_LENGTH"),
        ({"Upload-Length": "0"}, "ERR_INVALID_UPLOAD_LENGTH"),
        ({"Upload-Defer-Length": "1"}, "ERR_INVALID_UPLOAD_LENGTH"),
    ],
)
def test_final_upload_takes_no_length(tus: Tus, extra: dict[str, str], code: str) -> None:
    parts = [_partial(tus, b"abc"), _partial(tus, b"def")]
    before = object_dirs(tus.data_dir)
    response = tus.post({"Upload-Concat": "final;" + " ".join(parts), **extra})
    assert_problem(response, 400, code)
    _assert_nothing_new(tus, before)


@pytest.mark.parametrize(
    ("problem", "code"),
    [
        ("unknown", "ERR_INVALID_CONCAT"),
        ("not-partial", "ERR_INVALID_CONCAT"),
        ("final", "ERR_INVALID_CONCAT"),
        ("deleted", "ERR_INVALID_CONCAT"),
        ("other-owner", "ERR_INVALID_CONCAT"),
        ("other-server", None),
        ("not-an-upload-url", "ERR_INVALID_CONCAT"),
        ("query", "ERR_INVALID_CONCAT"),
        ("dotdot", "ERR_INVALID_CONCAT"),
    ],
)
def test_final_upload_with_a_bad_partial_is_400(
    tus: Tus,
    client: httpx.Client,
    token_for: Callable[[str, str], str],
    problem: str,
    code: str | None,
) -> None:
    good = _partial(tus, b"abc")
    if problem == "unknown":
        bad = tus.url(f"/files/{UNKNOWN_ID}")
    elif problem == "not-partial":
        bad = tus.upload(b"plain")
    elif problem == "final":
        bad = tus.post({"Upload-Concat": f"final;{good}"}).headers["Location"]
    elif problem == "deleted":
        bad = _partial(tus, b"gone")
        assert tus.delete(bad).status_code == 204
    elif problem == "other-owner":
        token = token_for("concat-other", "default")
        auth = {"Tus-Resumable": TUS_VERSION, "Authorization": f"Bearer {token}"}
        created = client.post(
            tus.server.files_url,
            headers={**auth, "Upload-Length": "0", "Upload-Concat": "partial"},
        )
        assert created.status_code == 201
        bad = created.headers["Location"]
    elif problem == "other-server":
        # The host is not compared (behind a proxy the public name is unknown), so the
        # same path on another host names the same upload: this one is accepted.
        bad = "https://uploads.example/files/" + upload_id(_partial(tus, b"xyz"))
    elif problem == "not-an-upload-url":
        bad = tus.url("/elsewhere/" + upload_id(good))
    elif problem == "query":
        bad = good + "?x=1"
    else:
        bad = tus.url("/files/../files/" + upload_id(good))
    before = object_dirs(tus.data_dir)
    response = tus.post({"Upload-Concat": f"final;{good} {bad}"})
    if code is None:
        assert response.status_code == 201, response.text
        return
    assert_problem(response, 400, code)
    assert "Location" not in response.headers
    _assert_nothing_new(tus, before)


def test_final_of_unfinished_partials_completes_with_the_last(tus: Tus) -> None:
    # concatenation-unfinished: a final may list partials still being written.
    a, b, c = os.urandom(100), os.urandom(70_000), os.urandom(30)
    url_a = _partial(tus, a)
    url_b = tus.create(len(b), headers={"Upload-Concat": "partial"})
    tus.send(url_b, b[:5], 0, None)
    url_c = tus.create(None, headers={"Upload-Concat": "partial"})
    concat = f"final;{url_a} {url_b} {url_c}"
    response = tus.post({"Upload-Concat": concat})
    assert response.status_code == 201, response.text
    final = response.headers["Location"]
    head = tus.head(final)
    assert head.status_code == 200
    h = head.headers
    assert h["Upload-Concat"] == concat
    assert "Upload-Offset" not in h  # not before it is concatenated
    assert "Upload-Length" not in h and "Upload-Defer-Length" not in h  # c's is not known
    assert_http_date(h["Upload-Expires"], near=time.time() + DEFAULT_TTL)
    assert_problem(tus.patch(final, b"x", 0), 403, "ERR_MODIFY_FINAL")
    download = tus.client.get(final, headers=tus.server.auth)
    assert_problem(download, 400, "ERR_UPLOAD_NOT_FINISHED")
    tus.send(url_b, b[5:], 5, None)
    assert "Upload-Offset" not in tus.head(final).headers
    # c's length, sent with its last bytes, completes the final in the same request.
    last = tus.patch(url_c, c, 0, {"Upload-Length": str(len(c))})
    assert last.status_code == 204
    catalog = SQLiteCatalog(tus.data_dir / "catalog.sqlite3")
    try:
        completed = catalog.get_upload(upload_id(final))
    finally:
        catalog.close()
    assert completed is not None and completed.state == UploadState.COMPLETE  # before any HEAD
    assert read_stored(tus.data_dir, upload_id(final)) == a + b + c
    h = tus.head(final).headers
    total = str(len(a) + len(b) + len(c))
    assert h["Upload-Offset"] == h["Upload-Length"] == total
    assert "Upload-Expires" not in h
    assert tus.client.get(final, headers=tus.server.auth).content == a + b + c


def test_final_whose_partial_is_deleted_while_unfinished_is_gone(tus: Tus) -> None:
    url_a = _partial(tus, b"abc")
    url_b = tus.create(10, headers={"Upload-Concat": "partial"})
    final = tus.post({"Upload-Concat": f"final;{url_a} {url_b}"}).headers["Location"]
    head = tus.head(final)
    assert head.headers["Upload-Length"] == "13" and "Upload-Offset" not in head.headers
    assert tus.delete(url_b).status_code == 204
    assert_problem(tus.head(url_b), 404, "ERR_UPLOAD_NOT_FOUND")
    # It can never complete: gone (410), and removed by the reaper with what it kept.
    assert_problem(tus.head(final), 410, "ERR_UPLOAD_GONE")
    assert tus.head(url_a).status_code == 200


def test_an_unfinished_final_may_be_deleted(tus: Tus) -> None:
    url_b = tus.create(3, headers={"Upload-Concat": "partial"})
    final = tus.post({"Upload-Concat": f"final;{url_b}"}).headers["Location"]
    assert tus.delete(final).status_code == 204
    assert_problem(tus.head(final), 404, "ERR_UPLOAD_NOT_FOUND")
    assert tus.patch(url_b, b"abc", 0).status_code == 204  # the partial goes on as it was
    assert read_stored(tus.data_dir, upload_id(url_b)) == b"abc"


def test_head_on_an_unfinished_partial(tus: Tus) -> None:
    url = tus.create(None, headers={"Upload-Concat": "partial"})
    tus.send(url, b"abc", 0, None)
    h = tus.head(url).headers
    assert h["Upload-Concat"] == "partial"
    assert h["Upload-Offset"] == "3"
    assert h["Upload-Defer-Length"] == "1"


# -- expiration -------------------------------------------------------------------------


@dataclass
class Expired:
    tus: Tus
    fresh: str  # created, nothing written
    written: str  # some bytes in
    complete: str  # finished before it could expire
    complete_data: bytes


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, client: httpx.Client) -> Iterator[Expired]:
    """A server whose uploads expire after 1 s, with uploads created ~1.5 s ago."""
    proc = start_server(tmp_path_factory, "ttl", {"GATEWAY_UPLOAD_TTL": "1"})
    try:
        tus = Tus(proc, client)
        response = tus.post({"Upload-Length": "10"})
        assert_http_date(response.headers["Upload-Expires"], near=time.time() + 1, slack=5)
        fresh = response.headers["Location"]
        written = tus.create(10)
        patched = tus.patch(written, b"abc", 0)
        assert_http_date(patched.headers["Upload-Expires"], near=time.time() + 1, slack=5)
        data = os.urandom(100)
        complete = tus.upload(data)
        time.sleep(1.5)
        yield Expired(tus, fresh, written, complete, data)
    finally:
        proc.stop()


@pytest.mark.parametrize("which", ["fresh", "written"])
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
def test_expired_upload_is_410(expired: Expired, which: str, method: str) -> None:
    url = expired.fresh if which == "fresh" else expired.written
    offset = 0 if which == "fresh" else 3
    headers = {**expired.tus.server.auth, "Content-Type": OCTET, "Upload-Offset": str(offset)}
    response = expired.tus.client.request(method, url, headers=headers, content=b"xyz")
    assert_problem(response, 410, "ERR_UPLOAD_GONE")
    assert "Upload-Offset" not in response.headers


def test_complete_upload_does_not_expire(expired: Expired) -> None:
    head = expired.tus.head(expired.complete)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "100"
    assert read_stored(expired.tus.data_dir, upload_id(expired.complete)) == expired.complete_data


# -- X-HTTP-Method-Override -------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["HEAD", "head", "hEaD"])
def test_override_head(tus: Tus, spelling: str) -> None:
    url = tus.create(10, metadata="k dg==")
    tus.send(url, b"abc", 0, None)
    response = tus.client.post(url, headers={**tus.server.auth, "X-HTTP-Method-Override": spelling})
    assert response.status_code == 200, response.text
    assert response.headers["Upload-Offset"] == "3"
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Upload-Metadata"] == "k dg=="
    assert response.headers["Cache-Control"] == "no-store"


def test_override_patch(tus: Tus) -> None:
    data = os.urandom(1000)
    url = tus.create(len(data))
    headers = {
        **tus.server.auth,
        "X-HTTP-Method-Override": "PATCH",
        "Content-Type": OCTET,
        "Upload-Offset": "0",
    }
    response = tus.client.post(url, headers=headers, content=data)
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "1000"
    assert read_stored(tus.data_dir, upload_id(url)) == data
    # Errors follow PATCH rules too.
    response = tus.client.post(url, headers={**headers, "Upload-Offset": "5"}, content=b"x")
    assert_problem(response, 409, "ERR_MISMATCHED_OFFSET")


def test_override_delete(tus: Tus) -> None:
    url = tus.create(10)
    response = tus.client.post(url, headers={**tus.server.auth, "X-HTTP-Method-Override": "DELETE"})
    assert response.status_code == 204, response.text
    assert not (tus.data_dir / "objects" / upload_id(url)).exists()
    assert_problem(tus.head(url), 404, "ERR_UPLOAD_NOT_FOUND")


def test_override_options(tus: Tus) -> None:
    response = tus.client.post(tus.server.files_url, headers={"X-HTTP-Method-Override": "OPTIONS"})
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == TUS_VERSION
    assert "Tus-Resumable" not in response.headers


@pytest.mark.parametrize(
    ("method", "override", "status"),
    [
        ("GET", "DELETE", 400),
        ("GET", "PATCH", 400),
        ("HEAD", "DELETE", 200),
        ("PATCH", "HEAD", 415),
    ],
)
def test_override_is_honoured_on_post_only(
    tus: Tus, method: str, override: str, status: int
) -> None:
    """A GET (a link, an image, a prefetch) must never delete or write an upload."""
    url = tus.create(10)
    tus.send(url, b"abc", 0, None)
    headers = {**tus.server.auth, "X-HTTP-Method-Override": override, "Upload-Offset": "3"}
    response = tus.client.request(method, url, headers=headers)
    assert response.status_code == status, response.text  # GET: 400, the upload is unfinished
    assert tus.offset(url) == 3
    metrics = tus.client.get(tus.url("/metrics"), headers=tus.server.auth).text
    assert 'gateway_method_overrides_total{outcome="ignored"}' in metrics


def test_override_on_the_collection_needs_a_resource_method(tus: Tus) -> None:
    response = tus.post({"X-HTTP-Method-Override": "PATCH", "Upload-Length": "1"})
    assert_problem(response, 405, "ERR_METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    "values",
    [
        [("X-HTTP-Method-Override", "TRACE")],
        [("X-HTTP-Method-Override", "")],
        [("X-HTTP-Method-Override", "HEAD"), ("X-HTTP-Method-Override", "DELETE")],
    ],
    ids=["trace", "empty", "twice"],
)
def test_bad_override_is_400(tus: Tus, values: list[tuple[str, str]]) -> None:
    url = tus.create(10)
    headers = [*tus.server.auth.items(), *values]
    response = tus.client.post(url, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "ERR_INVALID_HEADER"
    assert tus.offset(url) == 0


# -- routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/", 404, "ERR_NOT_FOUND"),
        ("GET", "/nope", 404, "ERR_NOT_FOUND"),
        ("POST", "/upload/", 404, "ERR_NOT_FOUND"),
        ("HEAD", f"/files/{UNKNOWN_ID}/x", 404, "ERR_NOT_FOUND"),
        ("PATCH", f"/files/{UNKNOWN_ID}/", 404, "ERR_NOT_FOUND"),
        ("GET", "/files/", 405, "ERR_METHOD_NOT_ALLOWED"),
        ("GET", f"/files/{UNKNOWN_ID}", 404, "ERR_UPLOAD_NOT_FOUND"),
        ("PUT", f"/files/{UNKNOWN_ID}", 405, "ERR_METHOD_NOT_ALLOWED"),
        ("DELETE", "/files/", 405, "ERR_METHOD_NOT_ALLOWED"),
        ("POST", "/healthz", 405, "ERR_METHOD_NOT_ALLOWED"),
    ],
)
def test_routes_answer_with_problems(
    tus: Tus, client: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, tus.url(path), headers=tus.server.auth)
    assert_problem(response, status, code)
    if status == 405:
        assert "Allow" in response.headers


def test_healthz(tus: Tus, client: httpx.Client) -> None:
    response = client.get(tus.url("/healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_refused_body_closes_the_connection(tus: Tus) -> None:
    """A 409 before the body is read must not make the server swallow the whole body."""
    url = tus.create(100)
    response = tus.patch(url, b"x" * 50, offset=7)
    assert_problem(response, 409, "ERR_MISMATCHED_OFFSET")
    assert response.headers["Connection"] == "close"
