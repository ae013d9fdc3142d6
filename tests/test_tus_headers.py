"""Table-driven tests for strict tus 1.0.0 header parsing, in the style of tusd's request tables."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest

from gateway import checksums
from gateway.errors import ERR, GatewayError
from gateway.tus import headers as h

SHA1_EMPTY = "2jmj7l5rSw0yVb/vlWAYkK/YBwk="  # base64(sha1(b""))
SHA256_EMPTY = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # base64(sha256(b""))
VALID_ID = "a" * 22
OTHER_ID = "AbC-_0123456789xyzXYZ_-"  # 23 characters


def raises(err: ERR, fn: Callable[[], object]) -> GatewayError:
    """Call fn, assert it raised GatewayError with exactly err, and return the error."""
    with pytest.raises(GatewayError) as info:
        fn()
    assert info.value.err is err
    assert info.value.detail  # every error carries a sentence for the client
    return info.value


# --- Tus-Resumable --------------------------------------------------------------


def test_tus_resumable_accepts_1_0_0() -> None:
    h.parse_tus_resumable(["1.0.0"])
    h.parse_tus_resumable([" 1.0.0\t"])  # surrounding whitespace is not part of the value


@pytest.mark.parametrize(
    "values",
    [[], ["0.2.2"], ["1.0"], ["1.0.0", "1.0.0"], ["1.0.0, 1.0.0"], [""], ["v1.0.0"], ["1.0.0\r\n"]],
)
def test_tus_resumable_rejects(values: list[str]) -> None:
    error = raises(ERR.UNSUPPORTED_VERSION, lambda: h.parse_tus_resumable(values))
    assert error.status == 412
    assert error.headers == {"Tus-Version": "1.0.0"}


# --- Upload-Length / Upload-Offset -----------------------------------------------

INT_VALID = [
    ([], None),
    (["0"], 0),
    (["1"], 1),
    (["1024"], 1024),
    ([" 42\t"], 42),
    (["9223372036854775807"], 2**63 - 1),
]

INT_INVALID = [
    ["-1"],
    ["+5"],
    ["1.5"],
    ["1e3"],
    [""],
    [" "],
    ["abc"],
    ["0x10"],
    ["\u0661\u0662"],  # Arabic-Indic digits: int() accepts them, we must not
    ["\uff11\uff12"],  # fullwidth digits
    ["1_000"],
    ["1 2"],
    ["12\n"],
    ["00"],
    ["007"],
    ["9223372036854775808"],  # 2**63
    ["12345678901234567890"],  # 20 digits
    ["0000000000000000000001"],
    ["1", "1"],
    ["1", "2"],
    ["1,2"],
    ["1, 1"],
]


@pytest.mark.parametrize(("values", "expected"), INT_VALID)
def test_upload_length_valid(values: list[str], expected: int | None) -> None:
    assert h.parse_upload_length(values) == expected


@pytest.mark.parametrize(("values", "expected"), INT_VALID)
def test_upload_offset_valid(values: list[str], expected: int | None) -> None:
    assert h.parse_upload_offset(values) == expected


@pytest.mark.parametrize("values", INT_INVALID)
def test_upload_length_invalid(values: list[str]) -> None:
    error = raises(ERR.INVALID_UPLOAD_LENGTH, lambda: h.parse_upload_length(values))
    assert "Upload-Length" in error.detail


@pytest.mark.parametrize("values", INT_INVALID)
def test_upload_offset_invalid(values: list[str]) -> None:
    error = raises(ERR.INVALID_OFFSET, lambda: h.parse_upload_offset(values))
    assert "Upload-Offset" in error.detail


def test_non_negative_int_uses_given_name_and_code() -> None:
    error = raises(
        ERR.INVALID_HEADER, lambda: h.parse_non_negative_int("X-N", ["x"], ERR.INVALID_HEADER)
    )
    assert "X-N" in error.detail


def test_oversized_integer_error_is_short() -> None:
    error = raises(ERR.INVALID_OFFSET, lambda: h.parse_upload_offset(["9" * 10_000]))
    assert len(error.detail) < 200


# --- Upload-Defer-Length ---------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [([], False), (["1"], True), ([" 1 "], True)])
def test_defer_length_valid(values: list[str], expected: bool) -> None:
    assert h.parse_defer_length(values) is expected


@pytest.mark.parametrize(
    "values", [["0"], ["2"], ["true"], [""], ["01"], ["1", "1"], ["1,1"], ["+1"], ["1.0"]]
)
def test_defer_length_invalid(values: list[str]) -> None:
    raises(ERR.INVALID_UPLOAD_DEFER_LENGTH, lambda: h.parse_defer_length(values))


# --- Upload-Metadata -------------------------------------------------------------

METADATA_VALID = [
    # The example from the tus 1.0.0 specification.
    (
        "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential",
        {"filename": b"world_domination_plan.pdf", "is_confidential": b""},
    ),
    ("", {}),
    ("key", {"key": b""}),
    ("key ", {"key": b""}),  # the space before an empty value MAY be sent
    ("a YQ==", {"a": b"a"}),
    ("a YQ==,b YmI=,c Y2Nj", {"a": b"a", "b": b"bb", "c": b"ccc"}),
    ("bin AP8=", {"bin": b"\x00\xff"}),  # values are bytes, not necessarily text
    ("Content-Type dGV4dC9wbGFpbg==", {"Content-Type": b"text/plain"}),
    ("k!#$%&'*.^_`|~ YQ==", {"k!#$%&'*.^_`|~": b"a"}),
]


@pytest.mark.parametrize(("raw", "items"), METADATA_VALID)
def test_metadata_valid(raw: str, items: dict[str, bytes]) -> None:
    metadata = h.parse_metadata([raw])
    assert metadata == h.Metadata(raw=raw.strip(), items=items)


def test_metadata_absent() -> None:
    assert h.parse_metadata([]) is None


METADATA_INVALID = [
    pytest.param(["a !!!"], id="bad-base64"),
    pytest.param(["a YQ"], id="unpadded-base64"),
    pytest.param(["a YQ==="], id="excess-padding"),
    pytest.param(["a YR=="], id="non-canonical-pad-bits"),
    pytest.param(["a YQ-_"], id="base64url-alphabet"),
    pytest.param(["a YQ==,a YQ=="], id="duplicate-key"),
    pytest.param(["a,a"], id="duplicate-empty-key"),
    pytest.param(["my key YQ=="], id="key-with-space"),
    pytest.param(["a YQ==, YQ=="], id="empty-key-after-comma"),
    pytest.param(["a YQ==, b YQ=="], id="space-after-comma"),
    pytest.param(["a  YQ=="], id="two-spaces"),
    pytest.param(["a YQ== YQ=="], id="three-parts"),
    pytest.param(["a YQ==,"], id="trailing-comma"),
    pytest.param([",a YQ=="], id="leading-comma"),
    pytest.param(["a YQ==,,b YQ=="], id="empty-pair"),
    pytest.param(["a YQ==\r\nX-Injected: 1"], id="crlf"),
    pytest.param(["a\x00 YQ=="], id="nul-in-key"),
    pytest.param(["a YQ==\x00"], id="nul-in-value"),
    pytest.param(["a\tYQ=="], id="tab"),
    pytest.param(["a\x7f YQ=="], id="del"),
    pytest.param(["ключ YQ=="], id="non-ascii-key"),
    pytest.param(["clÃ© YQ=="], id="latin1-decoded-utf8-key"),
    pytest.param(["a Y\u00e9Q="], id="non-ascii-value"),
    pytest.param(["k" * 129 + " YQ=="], id="key-too-long"),
    pytest.param(["a YQ==", "b YQ=="], id="duplicate-header-lines"),
    pytest.param(["a " + "QUFB" * 1024], id="oversize"),
    pytest.param([",".join(f"k{i}" for i in range(65))], id="too-many-pairs"),
]


@pytest.mark.parametrize("values", METADATA_INVALID)
def test_metadata_invalid(values: list[str]) -> None:
    raises(ERR.INVALID_METADATA, lambda: h.parse_metadata(values))


def test_metadata_size_limit_is_stated() -> None:
    raw = "a " + base64.b64encode(b"x" * 3070).decode()  # 4098 characters
    error = raises(ERR.INVALID_METADATA, lambda: h.parse_metadata([raw]))
    assert "4096" in error.detail


def test_metadata_limits_are_inclusive_and_configurable() -> None:
    at_limit = "abc " + "QUFB" * 1023  # exactly 4096 characters
    assert len(at_limit) == 4096
    assert h.parse_metadata([at_limit]) is not None
    pairs = ",".join(f"k{i}" for i in range(64))
    assert h.parse_metadata([pairs]) is not None
    assert h.parse_metadata(["k" * 128]) is not None
    raises(ERR.INVALID_METADATA, lambda: h.parse_metadata(["a YQ=="], max_bytes=5))
    raises(ERR.INVALID_METADATA, lambda: h.parse_metadata(["a,b"], max_pairs=1))
    raises(ERR.INVALID_METADATA, lambda: h.parse_metadata(["ab"], max_key_len=1))


# --- Upload-Checksum -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "algorithm", "digest"),
    [
        (f"sha1 {SHA1_EMPTY}", "sha1", hashlib.sha1(b"").digest()),
        (f"sha256 {SHA256_EMPTY}", "sha256", hashlib.sha256(b"").digest()),
        ("crc32 y/Q5Jg==", "crc32", bytes.fromhex("cbf43926")),
        ("crc32c 4waSgw==", "crc32c", bytes.fromhex("e3069283")),
        (f" sha1 {SHA1_EMPTY} ", "sha1", hashlib.sha1(b"").digest()),
    ],
)
def test_checksum_valid(value: str, algorithm: str, digest: bytes) -> None:
    parsed = h.parse_upload_checksum([value], checksums.SUPPORTED)
    assert parsed == h.ChecksumHeader(algorithm=algorithm, digest=digest)


def test_checksum_absent() -> None:
    assert h.parse_upload_checksum([], checksums.SUPPORTED) is None


@pytest.mark.parametrize(
    ("values", "err"),
    [
        ([f"foo {SHA1_EMPTY}"], ERR.UNSUPPORTED_CHECKSUM_ALGORITHM),
        ([f"SHA1 {SHA1_EMPTY}"], ERR.UNSUPPORTED_CHECKSUM_ALGORITHM),  # names are lowercase
        ([f"sha384 {SHA1_EMPTY}"], ERR.UNSUPPORTED_CHECKSUM_ALGORITHM),
        (["foo !!!"], ERR.UNSUPPORTED_CHECKSUM_ALGORITHM),
        (["sha1 " + "!" * 28], ERR.INVALID_CHECKSUM),  # right length, bad alphabet
        (["sha1 !!!"], ERR.INVALID_CHECKSUM),
        (["sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk"], ERR.INVALID_CHECKSUM),  # unpadded
        (["sha1 2jmj7l5rSw0yVb_vlWAYkK_YBwk="], ERR.INVALID_CHECKSUM),  # base64url alphabet
        ([f"sha1 {SHA256_EMPTY}"], ERR.CHECKSUM_MISMATCH),  # a sha256 digest: wrong length
        (["crc32 y/Q5"], ERR.CHECKSUM_MISMATCH),  # 3 bytes
        (["crc32 y/Q5Jg"], ERR.INVALID_CHECKSUM),
        (["crc32 y/Q5Jh=="], ERR.INVALID_CHECKSUM),  # non-zero pad bits
        (["sha1"], ERR.INVALID_CHECKSUM),  # missing digest
        (["sha1 "], ERR.INVALID_CHECKSUM),
        ([""], ERR.INVALID_CHECKSUM),
        ([SHA1_EMPTY], ERR.INVALID_CHECKSUM),  # digest without a name
        (["sha1 " + "=" * 28], ERR.INVALID_CHECKSUM),  # right length, only padding
        ([f"sha1  {SHA1_EMPTY}"], ERR.INVALID_CHECKSUM),  # two spaces
        ([f"sha1 {SHA1_EMPTY} extra"], ERR.INVALID_CHECKSUM),
        ([f"sha1\t{SHA1_EMPTY}"], ERR.INVALID_CHECKSUM),
        ([f"sha1 {SHA1_EMPTY}\r\nX: y"], ERR.INVALID_CHECKSUM),
        ([f"sha1 {SHA1_EMPTY}", f"sha1 {SHA1_EMPTY}"], ERR.INVALID_CHECKSUM),  # duplicates
        (["sha1 " + "A" * 100_000], ERR.CHECKSUM_MISMATCH),
    ],
)
def test_checksum_invalid(values: list[str], err: ERR) -> None:
    raises(err, lambda: h.parse_upload_checksum(values, checksums.SUPPORTED))


def test_checksum_respects_configured_subset() -> None:
    error = raises(
        ERR.UNSUPPORTED_CHECKSUM_ALGORITHM,
        lambda: h.parse_upload_checksum([f"sha256 {SHA256_EMPTY}"], ("sha1",)),
    )
    assert "sha1" in error.detail


# --- Upload-Concat ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("partial", h.Concat(kind="partial", urls=())),
        ("final;/files/a /files/b", h.Concat(kind="final", urls=("/files/a", "/files/b"))),
        ("final;/files/a", h.Concat(kind="final", urls=("/files/a",))),
        (
            "final;https://up.example/files/a http://x:8080/files/b",
            h.Concat(kind="final", urls=("https://up.example/files/a", "http://x:8080/files/b")),
        ),
        (" partial ", h.Concat(kind="partial", urls=())),
    ],
)
def test_concat_valid(value: str, expected: h.Concat) -> None:
    assert h.parse_concat([value]) == expected


def test_concat_absent() -> None:
    assert h.parse_concat([]) is None


@pytest.mark.parametrize(
    "values",
    [
        ["final;"],
        ["final"],
        ["final; "],
        ["other"],
        [""],
        ["Partial"],
        ["partial;/files/a"],
        ["FINAL;/files/a"],
        ["final:/files/a"],
        ["final; /files/a"],
        ["final;/files/a  /files/b"],
        ["final;/files/a\t/files/b"],
        ["final;/files/a\r\nX: y"],
        ["final;/files/\x00a"],
        ["final;/files/é"],
        ["final;/files/a", "final;/files/b"],
        ["partial", "partial"],
        ["final;" + " ".join(["/f/a"] * 1001)],
        ["final;/" + "a" * (64 * 1024)],
    ],
)
def test_concat_invalid(values: list[str]) -> None:
    raises(ERR.INVALID_CONCAT, lambda: h.parse_concat(values))


def test_concat_url_limit_is_inclusive() -> None:
    parsed = h.parse_concat(["final;" + " ".join(["/f/a"] * 1000)])
    assert parsed is not None
    assert len(parsed.urls) == 1000


# --- Upload URLs and ids ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base_path", "expected"),
    [
        (f"/files/{VALID_ID}", "/files/", VALID_ID),
        (f"/files/{OTHER_ID}", "/files/", OTHER_ID),
        (f"/files/{VALID_ID}", "/files", VALID_ID),  # base path without trailing slash
        (f"http://up.example/files/{VALID_ID}", "/files/", VALID_ID),
        (f"https://up.example:8443/files/{VALID_ID}", "/files/", VALID_ID),
        (f"HTTPS://UP.EXAMPLE/files/{VALID_ID}", "/files/", VALID_ID),
        (f"https://up.example/api/v1/files/{VALID_ID}", "/api/v1/files/", VALID_ID),
        (f"/other/{VALID_ID}", "/files/", None),  # foreign base path
        (f"https://up.example/other/{VALID_ID}", "/files/", None),
        (f"/filesX{VALID_ID}", "/files", None),
        (f"/files/{VALID_ID}/", "/files/", None),
        (f"/files/{VALID_ID}?x=1", "/files/", None),
        (f"https://up.example/files/{VALID_ID}?x=1", "/files/", None),
        (f"https://up.example/files/{VALID_ID}#frag", "/files/", None),
        (f"https://user@up.example/files/{VALID_ID}", "/files/", None),
        (f"https://up.example:99999/files/{VALID_ID}", "/files/", None),
        (f"https://up.example:x/files/{VALID_ID}", "/files/", None),
        (f"https:///files/{VALID_ID}", "/files/", None),  # no host
        (f"ftp://up.example/files/{VALID_ID}", "/files/", None),
        (f"//up.example/files/{VALID_ID}", "/files/", None),
        (f"files/{VALID_ID}", "/files/", None),
        (f"up.example/files/{VALID_ID}", "/files/", None),
        ("../etc", "/files/", None),
        ("/files/../etc/passwd", "/files/", None),
        (f"/files/../files/{VALID_ID}", "/files/", None),
        (f"/files/{VALID_ID[:-2]}%41", "/files/", None),
        (f"/files/\t{VALID_ID}", "/files/", None),
        (f"https://up.example/fi\tles/{VALID_ID}", "/files/", None),
        (f"/files/{VALID_ID}\r\n", "/files/", None),
        ("/files/", "/files/", None),
        ("", "/files/", None),
    ],
)
def test_upload_id_from_url(url: str, base_path: str, expected: str | None) -> None:
    assert h.upload_id_from_url(url, base_path) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a" * 22, True),
        ("a" * 32, True),
        (OTHER_ID, True),
        ("-" * 22, True),
        ("", False),
        ("abc", False),
        ("a" * 21, False),
        ("a" * 33, False),
        ("a.b" * 8, False),
        ("a/b" * 8, False),
        ("a/b", False),
        ("a" * 21 + "%", False),
        ("a" * 20 + "%2", False),
        ("a" * 21 + "=", False),
        ("a" * 21 + "+", False),
        ("a" * 21 + "\n", False),
        ("a" * 21 + "é", False),
        ("a" * 21 + "\u0661", False),  # Arabic-Indic digit one
    ],
)
def test_is_valid_upload_id(value: str, expected: bool) -> None:
    assert h.is_valid_upload_id(value) is expected


def test_new_upload_id_is_valid_and_random() -> None:
    ids = {h.new_upload_id() for _ in range(100)}
    assert len(ids) == 100
    for upload_id in ids:
        assert len(upload_id) == 22
        assert h.is_valid_upload_id(upload_id)


# --- Dates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1403712000, "Wed, 25 Jun 2014 16:00:00 GMT"),  # the tus spec's Upload-Expires example
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (1403712000.9, "Wed, 25 Jun 2014 16:00:00 GMT"),
    ],
)
def test_format_http_date(ts: float, expected: str) -> None:
    assert h.format_http_date(ts) == expected
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", expected)


def test_a_new_upload_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway hold ID` and other commands would read an id starting with "-" as an option."""
    drawn = iter(["-" + "A" * 21, "_" + "B" * 21])
    monkeypatch.setattr("gateway.tus.headers.secrets.token_urlsafe", lambda n: next(drawn))
    assert h.new_upload_id() == "_" + "B" * 21
