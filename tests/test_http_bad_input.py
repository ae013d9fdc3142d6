"""Hostile and malformed requests: always a clear 4xx with a stable code, never a 500,
and nothing stored (no new upload in the object store, no offset moved, no file
written outside the data dir).

Headers httpx sends as given, so these run against the app in this process
(tests/inprocess.py). Requests that httpx would refuse or normalise (dot segments,
percent escapes, a Content-Length the body does not match) go over a raw socket to a
real `gateway serve` process, in test_http_bad_input_wire.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import read_stored
from tests.inprocess import app_tus
from tests.tushttp import (
    OCTET,
    UNKNOWN_ID,
    Tus,
    assert_problem,
    b64,
    checksum_header,
    object_dirs,
    upload_id,
)

Header = tuple[str, str | bytes]


@pytest.fixture(scope="module")
def tus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tus]:
    """The app in this process: nothing here needs a socket."""
    with app_tus(tmp_path_factory.mktemp("bad-input") / "data") as client:
        yield client


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
        ([("Upload-Checksum", "sha1 " + "A" * 10_000)], 460, "ERR_CHECKSUM_MISMATCH"),
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
        ("sha1 " + "!" * 10_000, "ERR_INVALID_CHECKSUM"),
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


# -- ids and paths ----------------------------------------------------------------------


def test_unknown_id_of_the_right_shape_is_404(tus: Tus) -> None:
    assert_problem(tus.head(tus.url(f"/files/{UNKNOWN_ID}")), 404, "ERR_UPLOAD_NOT_FOUND")
