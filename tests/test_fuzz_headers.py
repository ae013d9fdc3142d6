"""Property-based tests of the tus header parsers (gateway/tus/headers.py): any input
either parses to the value it spells or is refused with the header's own error code;
nothing else escapes, and what a client sends correctly always parses back."""

from __future__ import annotations

import base64
from collections.abc import Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import checksums
from gateway.errors import ERR, GatewayError
from gateway.tus import headers as h

FUZZ = settings(max_examples=200, deadline=None)
OWS = st.text(alphabet=" \t", max_size=3)
# Header values as a server sees them: latin-1 text, controls included.
values = st.lists(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=60), max_size=3)
ascii_key = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=128,
)


def refused_with(call: Callable[[], object], *codes: ERR) -> object:
    """The call's value, or None when it raised a GatewayError with one of `codes`."""
    try:
        return call()
    except GatewayError as exc:
        assert exc.err in codes, exc.err
        return None


@FUZZ
@given(values)
@example(["+5"])
@example(["٣"])
@example(["1_0"])
@example(["00"])
@example(["9223372036854775808"])
def test_offset_parses_only_plain_decimal(raw: list[str]) -> None:
    got = refused_with(lambda: h.parse_upload_offset(raw), ERR.INVALID_OFFSET)
    if got is not None:
        (value,) = raw
        assert str(got) == value.strip(" \t")
        assert 0 <= int(str(got)) <= h.MAX_INT
    if not raw:
        assert got is None


@FUZZ
@given(st.integers(0, h.MAX_INT), OWS, OWS)
def test_every_int64_length_parses(n: int, before: str, after: str) -> None:
    assert h.parse_upload_length([f"{before}{n}{after}"]) == n
    assert h.parse_upload_offset([str(n)]) == n


@FUZZ
@given(values)
def test_tus_resumable_accepts_only_1_0_0(raw: list[str]) -> None:
    try:
        h.parse_tus_resumable(raw)
    except GatewayError as exc:
        assert exc.err is ERR.UNSUPPORTED_VERSION
        assert len(raw) != 1 or raw[0].strip(" \t") != "1.0.0"
    else:
        assert len(raw) == 1 and raw[0].strip(" \t") == "1.0.0"


@FUZZ
@given(values)
def test_defer_length_is_exactly_1(raw: list[str]) -> None:
    got = refused_with(lambda: h.parse_defer_length(raw), ERR.INVALID_UPLOAD_DEFER_LENGTH)
    if got is True:
        assert [v.strip(" \t") for v in raw] == ["1"]


@FUZZ
@given(
    st.dictionaries(ascii_key.filter(lambda k: " " not in k), st.binary(max_size=40), max_size=8)
)
def test_metadata_a_client_encodes_parses_back(items: dict[str, bytes]) -> None:
    raw = ",".join(
        f"{key} {base64.b64encode(value).decode()}" if value or key[-1] == "x" else key
        for key, value in items.items()
    )
    parsed = h.parse_metadata([raw])
    assert parsed is not None
    assert parsed.items == items
    assert parsed.raw == raw.strip(" \t")  # a trailing "key " loses its space, as OWS


@FUZZ
@given(values)
@example(["a YQ==,a YQ=="])
@example(["a YR=="])
@example([" a YQ=="])
@example(["a  YQ=="])
@example(["é YQ=="])
@example(["a\x00 YQ=="])
def test_metadata_anything_parses_or_is_refused(raw: list[str]) -> None:
    parsed = refused_with(lambda: h.parse_metadata(raw), ERR.INVALID_METADATA)
    if isinstance(parsed, h.Metadata):
        (value,) = raw
        assert parsed.raw == value.strip(" \t")
        for key, decoded in parsed.items.items():
            assert all(0x21 <= ord(c) <= 0x7E for c in key) and "," not in key
            assert f"{key} {base64.b64encode(decoded).decode()}" in parsed.raw or not decoded


@FUZZ
@given(st.sampled_from(checksums.SUPPORTED), st.data())
def test_checksum_a_client_sends_parses_back(algorithm: str, data: st.DataObject) -> None:
    digest = data.draw(
        st.binary(
            min_size=checksums.digest_size(algorithm), max_size=checksums.digest_size(algorithm)
        )
    )
    header = f"{algorithm} {base64.b64encode(digest).decode()}"
    assert h.parse_upload_checksum([header], checksums.SUPPORTED) == h.ChecksumHeader(
        algorithm, digest
    )


@FUZZ
@given(values)
@example(["sha1 " + "A" * 10_000])
@example(["SHA1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="])
@example(["sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J1="])
def test_checksum_anything_parses_or_is_refused(raw: list[str]) -> None:
    got = refused_with(
        lambda: h.parse_upload_checksum(raw, checksums.SUPPORTED),
        ERR.INVALID_CHECKSUM,
        ERR.UNSUPPORTED_CHECKSUM_ALGORITHM,
        ERR.CHECKSUM_MISMATCH,  # a digest of the wrong length can match no body: 460
    )
    if isinstance(got, h.ChecksumHeader):
        assert got.algorithm in checksums.SUPPORTED
        assert len(got.digest) == checksums.digest_size(got.algorithm)


@FUZZ
@given(values)
@example(["final;/files/a  /files/b"])
@example(["final; /files/a"])
def test_concat_anything_parses_or_is_refused(raw: list[str]) -> None:
    got = refused_with(lambda: h.parse_concat(raw), ERR.INVALID_CONCAT)
    if isinstance(got, h.Concat) and got.kind == "final":
        assert got.urls and all(u and " " not in u for u in got.urls)


@FUZZ
@given(st.text(max_size=80))
@example("/files/../files/AAAAAAAAAAAAAAAAAAAAAA")
@example("http://x@evil/files/AAAAAAAAAAAAAAAAAAAAAA")
@example("http://host:99999/files/AAAAAAAAAAAAAAAAAAAAAA")
@example("/files/AAAAAAAAAAAAAAAAAAAAAA\n")
def test_upload_id_from_url_yields_only_valid_ids(url: str) -> None:
    got = h.upload_id_from_url(url, "/files/")
    assert got is None or (h.is_valid_upload_id(got) and url.split("?")[0].endswith(got))


@FUZZ
@given(st.just(None).map(lambda _: h.new_upload_id()), st.sampled_from(["", "https://gw:8443"]))
def test_upload_urls_name_their_ids(upload_id: str, origin: str) -> None:
    assert h.upload_id_from_url(f"{origin}/files/{upload_id}", "/files/") == upload_id
