"""Hostile and malformed requests: always a clear 4xx with a stable code, never a 500,
and nothing stored (no new upload in the object store, no offset moved, no file
written outside the data dir).

Black-box against a real `gateway serve` process. Requests that httpx would refuse or
normalise (dot segments, percent escapes, a Content-Length the body does not match)
go over a raw socket.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import read_stored
from tests.rawhttp import raw_request, request_head
from tests.server import GatewayProcess
from tests.tushttp import (
    OCTET,
    PROBLEM,
    TUS_VERSION,
    UNKNOWN_ID,
    Tus,
    assert_problem,
    b64,
    checksum_header,
    object_dirs,
    start_server,
    tree,
    tus_client,
    upload_id,
)

Header = tuple[str, str | bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = start_server(tmp_path_factory, "bad-input")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def tus(server: GatewayProcess) -> Iterator[Tus]:
    with tus_client() as client:
        yield Tus(server, client)


@pytest.fixture
def untouched(tus: Tus) -> Iterator[None]:
    """The test must leave no new upload and no new file anywhere near the data dir."""
    root = tus.data_dir.parent
    objects, files = object_dirs(tus.data_dir), _files(root)
    yield
    assert object_dirs(tus.data_dir) == objects, "a refused request created an upload"
    assert _files(root) == files, "a refused request created a file"


def _files(root: Path) -> set[str]:
    # The catalog's WAL and journal files come and go with every query; they are not uploads.
    return {p for p in tree(root) if "catalog.sqlite3" not in p}


def _wire(headers: list[Header]) -> list[tuple[bytes, bytes]]:
    """Header lines as bytes, so values outside ASCII go out exactly as given."""
    return [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers]


def _post(tus: Tus, headers: list[Header], content: bytes = b"") -> httpx.Response:
    base: list[Header] = list(tus.server.auth.items())
    return tus.client.post(tus.server.files_url, headers=_wire([*base, *headers]), content=content)


def _patch(tus: Tus, url: str, headers: list[Header], content: bytes = b"x") -> httpx.Response:
    base: list[Header] = [*tus.server.auth.items(), ("Content-Type", OCTET)]
    return tus.client.patch(url, headers=_wire([*base, *headers]), content=content)


# -- Upload-Length and Upload-Offset ----------------------------------------------------

# Values that are not one non-negative int64 in plain decimal. Each is refused, never
# clamped, truncated or read as something else.
BAD_INTS: list[tuple[str, list[str | bytes]]] = [
    ("huge", [str(10**30)]),
    ("int64-max+1", [str(2**63)]),
    ("twenty-digits", ["1" + "0" * 19]),
    ("negative", ["-1"]),
    ("negative-zero", ["-0"]),
    ("plus", ["+5"]),
    ("non-numeric", ["abc"]),
    ("fraction", ["1.5"]),
    ("exponent", ["1e3"]),
    ("hex", ["0x10"]),
    ("leading-zero", ["05"]),
    ("underscore", ["1_000"]),
    ("inner-space", ["1 000"]),
    ("empty", [""]),
    ("arabic-indic", ["\u0661\u0662".encode()]),
    ("fullwidth", ["\uff15".encode()]),
    ("folded-list", ["5, 5"]),
    ("duplicate-same", ["5", "5"]),
    ("duplicate-different", ["5", "6"]),
]
BAD_INT_IDS = [name for name, _ in BAD_INTS]
BAD_INT_VALUES = [values for _, values in BAD_INTS]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("values", BAD_INT_VALUES, ids=BAD_INT_IDS)
def test_post_with_a_bad_upload_length(tus: Tus, values: list[str | bytes]) -> None:
    response = _post(tus, [("Upload-Length", v) for v in values])
    assert_problem(response, 400, "ERR_INVALID_UPLOAD_LENGTH")
    assert "Location" not in response.headers


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("values", BAD_INT_VALUES, ids=BAD_INT_IDS)
def test_creation_with_upload_and_a_bad_upload_length(tus: Tus, values: list[str | bytes]) -> None:
    headers: list[Header] = [("Upload-Length", v) for v in values]
    response = _post(tus, [*headers, ("Content-Type", OCTET)], content=b"hello")
    assert_problem(response, 400, "ERR_INVALID_UPLOAD_LENGTH")


@pytest.mark.parametrize("values", BAD_INT_VALUES, ids=BAD_INT_IDS)
def test_patch_with_a_bad_upload_offset(tus: Tus, values: list[str | bytes]) -> None:
    url = tus.started(b"0123456789", 5)
    response = _patch(tus, url, [("Upload-Offset", v) for v in values], content=b"56789")
    assert_problem(response, 400, "ERR_INVALID_OFFSET")
    assert tus.offset(url) == 5


@pytest.mark.parametrize("values", BAD_INT_VALUES, ids=BAD_INT_IDS)
def test_patch_with_a_bad_upload_length(tus: Tus, values: list[str | bytes]) -> None:
    url = tus.create(None)
    headers: list[Header] = [("Upload-Offset", "0"), *[("Upload-Length", v) for v in values]]
    response = _patch(tus, url, headers, content=b"abc")
    assert_problem(response, 400, "ERR_INVALID_UPLOAD_LENGTH")
    head = tus.head(url)
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Defer-Length"] == "1"


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "values",
    [["0"], ["2"], ["yes"], ["1", "1"], ["1, 1"], ["1 1"], ["-1"]],
    ids=["0", "2", "yes", "duplicate", "folded", "spaced", "negative"],
)
def test_post_with_a_bad_defer_length(tus: Tus, values: list[str]) -> None:
    response = _post(tus, [("Upload-Defer-Length", v) for v in values])
    assert_problem(response, 400, "ERR_INVALID_UPLOAD_LENGTH_DEFER")


# -- Upload-Metadata --------------------------------------------------------------------


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "values",
    [
        ["name !!!!"],  # not base64 at all
        ["name YQ"],  # unpadded
        ["name YQ==="],  # over-padded
        ["name YR=="],  # non-canonical: non-zero pad bits
        ["name Y-_="],  # base64url alphabet
        ["name YQ== extra"],  # a third field
        ["name  YQ=="],  # two spaces
        ["a YQ==, YQ=="],  # empty key
        ["a YQ==,"],  # trailing comma: an empty pair
        [",a YQ=="],  # leading comma
        ["a YQ==, b Yg=="],  # a space after the comma shifts the key
        ["k YQ==,k Yg=="],  # duplicate keys
        ["k YQ==,k"],  # duplicate keys, one without a value
        ["a YQ==", "b Yg=="],  # two header lines
        ["k" * 129 + " YQ=="],  # key too long
        [",".join(f"k{i} YQ==" for i in range(65))],  # too many pairs
        ["k " + b64(b"x" * 3069) + ",ab"],  # 4097 bytes: over the 4 KiB limit
        ["k " + b64(b"x" * 30_000)],  # far over it
        ["k\tYQ=="],  # a control character (tab) instead of the space
        ["k YQ==\t,j Yg=="],  # a control character inside
        ["\u00fc YQ==".encode()],  # a non-ASCII key
        ["k \u00fc".encode()],  # a non-ASCII value
    ],
    ids=[
        "not-base64",
        "unpadded",
        "over-padded",
        "non-canonical",
        "base64url",
        "three-fields",
        "two-spaces",
        "empty-key",
        "trailing-comma",
        "leading-comma",
        "space-after-comma",
        "duplicate-key",
        "duplicate-bare-key",
        "two-lines",
        "long-key",
        "65-pairs",
        "4097-bytes",
        "40k",
        "tab-separator",
        "tab-inside",
        "non-ascii-key",
        "non-ascii-value",
    ],
)
def test_bad_metadata_is_400(tus: Tus, values: list[str | bytes]) -> None:
    response = _post(tus, [("Upload-Length", "5"), *[("Upload-Metadata", v) for v in values]])
    assert_problem(response, 400, "ERR_INVALID_METADATA")


def test_metadata_at_the_4_kib_limit_is_accepted(tus: Tus) -> None:
    metadata = "k " + b64(b"x" * 3069) + ",a"
    assert len(metadata) == 4096
    url = tus.create(1, metadata=metadata)
    assert tus.head(url).headers["Upload-Metadata"] == metadata


# -- other headers ----------------------------------------------------------------------


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([("Upload-Concat", "partial;")], 400, "ERR_INVALID_CONCAT"),
        ([("Upload-Concat", "Partial")], 400, "ERR_INVALID_CONCAT"),
        ([("Upload-Concat", "final")], 400, "ERR_INVALID_CONCAT"),
        ([("Upload-Concat", "partial"), ("Upload-Concat", "partial")], 400, "ERR_INVALID_CONCAT"),
        ([("Upload-Checksum", "sha1 " + b64(b"x" * 20))] * 2, 400, "ERR_INVALID_CHECKSUM"),
        (
            [("Upload-Checksum", "sha3 " + b64(b"x" * 32))],
            400,
            "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM",
        ),
        ([("Upload-Checksum", "sha1 " + "A" * 10_000)], 400, "ERR_INVALID_CHECKSUM"),
        ([("Content-Type", OCTET)], 415, "ERR_INVALID_CONTENT_TYPE"),
        ([("Content-Type", "text/plain")], 415, "ERR_INVALID_CONTENT_TYPE"),
    ],
    ids=[
        "concat-partial-semicolon",
        "concat-capital",
        "concat-final-without-urls",
        "concat-twice",
        "checksum-twice",
        "checksum-unknown",
        "checksum-huge",
        "content-type-twice-same",
        "content-type-twice-other",
    ],
)
def test_post_with_bad_headers(tus: Tus, headers: list[Header], status: int, code: str) -> None:
    # Every request here carries a checksum'd body (creation-with-upload).
    base: list[Header] = [("Upload-Length", "3"), ("Content-Type", OCTET)]
    if not any(name == "Upload-Checksum" for name, _ in headers):
        base.append(("Upload-Checksum", checksum_header("sha1", b"abc")))
    response = _post(tus, [*base, *headers], content=b"abc")
    assert_problem(response, status, code)


@pytest.mark.parametrize(
    "concat",
    [
        "final;",
        "final;/files/{a}  /files/{b}",
        "final;/files/{a}\t/files/{b}",
        "final;/files/{a},/files/{b}",
        "final;/files/../etc/passwd",
        "final;/files/%2e%2e",
        "final;file:///etc/passwd",
        "final;ftp://127.0.0.1/files/{a}",
        "final;http://user@127.0.0.1/files/{a}",
        "final;http://127.0.0.1:99999/files/{a}",
        "final;http://127.0.0.1/files/{a}#x",
        "final;/files/{a}/",
        "final;/files/",
        "final;" + " ".join(["/files/{a}"] * 1001),
    ],
)
def test_final_with_bad_urls_is_400(tus: Tus, concat: str) -> None:
    a = upload_id(tus.upload(b"abc", headers={"Upload-Concat": "partial"}))
    b = upload_id(tus.upload(b"def", headers={"Upload-Concat": "partial"}))
    before = object_dirs(tus.data_dir)
    value = concat.replace("{a}", a).replace("{b}", b)
    response = _post(tus, [("Upload-Concat", value)])
    assert_problem(response, 400, "ERR_INVALID_CONCAT")
    assert object_dirs(tus.data_dir) == before


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("sha3 " + b64(b"x" * 32), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("md4 " + b64(b"x" * 16), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("SHA256 " + b64(b"x" * 32), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("../../sha1 " + b64(b"x" * 20), "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ("sha1 " + "A" * 10_000, "ERR_INVALID_CHECKSUM"),
        ("sha1:" + b64(b"x" * 20), "ERR_INVALID_CHECKSUM"),
    ],
    ids=["sha3", "md4", "uppercase", "path", "huge", "colon"],
)
def test_patch_with_a_bad_checksum(tus: Tus, value: str, code: str) -> None:
    url = tus.started(b"0123456789", 5)
    response = _patch(tus, url, [("Upload-Offset", "5"), ("Upload-Checksum", value)], b"56789")
    assert_problem(response, 400, code)
    assert tus.offset(url) == 5


@pytest.mark.parametrize(
    "content_types",
    [[OCTET, "text/plain"], ["text/plain", OCTET], [OCTET, OCTET], [f"{OCTET}, text/plain"]],
    ids=["octet-first", "octet-second", "octet-twice", "folded"],
)
def test_patch_with_several_content_types_is_415(tus: Tus, content_types: list[str]) -> None:
    url = tus.started(b"0123456789", 5)
    headers = [*tus.server.auth.items(), ("Upload-Offset", "5")]
    headers += [("Content-Type", v) for v in content_types]
    response = tus.client.patch(url, headers=headers, content=b"56789")
    assert_problem(response, 415, "ERR_INVALID_CONTENT_TYPE")
    assert tus.offset(url) == 5


# -- bodies that do not fit -------------------------------------------------------------


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(("length", "body"), [(0, 1), (5, 6), (1000, 1 << 20)])
def test_creation_body_longer_than_upload_length(tus: Tus, length: int, body: int) -> None:
    headers: list[Header] = [("Upload-Length", str(length)), ("Content-Type", OCTET)]
    response = _post(tus, headers, content=os.urandom(body))
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    assert "Location" not in response.headers


@pytest.mark.parametrize(("done", "extra"), [(0, 11), (5, 6), (9, 2), (9, 1 << 20)])
def test_patch_body_longer_than_upload_length(tus: Tus, done: int, extra: int) -> None:
    data = os.urandom(10)
    url = tus.started(data, done)
    response = tus.patch(url, os.urandom(extra), done)
    assert_problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    assert tus.offset(url) == done
    tus.send(url, data[done:], done, None)
    assert read_stored(tus.data_dir, upload_id(url)) == data


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


def test_unknown_id_of_the_right_shape_is_404(tus: Tus) -> None:
    assert_problem(tus.head(tus.url(f"/files/{UNKNOWN_ID}")), 404, "ERR_UPLOAD_NOT_FOUND")
