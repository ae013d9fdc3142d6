"""The resumable-upload draft's header fields, parsed and formatted per interop version."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import ERR, GatewayError
from gateway.ietf import headers as h
from gateway.ietf.versions import SUPPORTED, VERSIONS, Version
from gateway.tus.headers import parse_metadata


def _refused(err: ERR, call: object) -> GatewayError:
    assert callable(call)
    with pytest.raises(GatewayError) as info:
        call()
    assert info.value.err is err, info.value
    return info.value


def test_the_versions_clients_ship_are_served() -> None:
    assert SUPPORTED == (3, 4, 5, 6, 7, 8)


@pytest.mark.parametrize("number", SUPPORTED)
def test_interop_version_names_its_version(number: int) -> None:
    assert h.parse_interop_version([str(number)]).number == number
    assert h.parse_interop_version([f" {number}\t"]).number == number


@pytest.mark.parametrize(
    "values",
    [[], ["2"], ["9"], ["-5"], ["5.0"], ["five"], ["5;x=1"], ["5", "5"], ["5, 6"], [""]],
    ids=["missing", "2", "9", "negative", "decimal", "token", "params", "twice", "list", "empty"],
)
def test_other_interop_versions_are_refused(values: list[str]) -> None:
    error = _refused(ERR.UNSUPPORTED_INTEROP_VERSION, lambda: h.parse_interop_version(values))
    assert error.status == 400
    assert "3, 4, 5, 6, 7, 8" in error.detail


# -- Upload-Complete / Upload-Incomplete ------------------------------------------------


def test_version_3_says_incomplete_where_later_ones_say_complete() -> None:
    v3, v5 = VERSIONS[3], VERSIONS[5]
    assert h.complete_field_name(v3) == "Upload-Incomplete"
    assert h.parse_complete(v3, ["?1"]) is False
    assert h.parse_complete(v3, ["?0"]) is True
    assert h.complete_field(v3, True) == {"Upload-Incomplete": "?0"}
    assert h.complete_field(v3, False) == {"Upload-Incomplete": "?1"}
    assert h.complete_field_name(v5) == "Upload-Complete"
    assert h.parse_complete(v5, ["?1"]) is True
    assert h.parse_complete(v5, ["?0"]) is False
    assert h.complete_field(v5, True) == {"Upload-Complete": "?1"}


@pytest.mark.parametrize("version", VERSIONS.values(), ids=lambda v: f"v{v.number}")
def test_an_absent_completion_field_is_none(version: Version) -> None:
    assert h.parse_complete(version, []) is None


@pytest.mark.parametrize("values", [["1"], ["true"], ["?2"], ["?1;a=b"], ["?1", "?1"], ["?"], [""]])
def test_a_completion_field_is_an_sf_boolean(values: list[str]) -> None:
    _refused(ERR.INVALID_UPLOAD_COMPLETE, lambda: h.parse_complete(VERSIONS[8], values))


def test_absence_on_an_append_reads_as_each_draft_says() -> None:
    # -01: "If the end of the request body is not the end of the upload, the
    # Upload-Incomplete header field MUST be set to true"; -03..-05's examples omit
    # Upload-Complete on a non-final append; -06 on: the append MUST include it.
    assert VERSIONS[3].absent_means_complete
    assert not any(VERSIONS[n].absent_means_complete for n in (4, 5, 6, 7, 8))
    assert [n for n in SUPPORTED if VERSIONS[n].complete_required] == [7, 8]


# -- integers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("25", 25), ("007", 7), (" 9 ", 9)])
def test_offsets_and_lengths_are_sf_integers(raw: str, value: int) -> None:
    assert h.parse_offset([raw]) == value
    assert h.parse_length([raw]) == value


def test_absent_integers_are_none() -> None:
    assert h.parse_offset([]) is None
    assert h.parse_length([]) is None


@pytest.mark.parametrize(
    "values",
    [["-1"], ["+1"], ["1.5"], ["1e3"], ["1" * 16], ["1;a"], ["1", "1"], ["1, 2"], [""], ["٣"]],
    ids=["neg", "plus", "dec", "exp", "16-digits", "params", "twice", "list", "empty", "arabic"],
)
def test_bad_integers_are_refused(values: list[str]) -> None:
    _refused(ERR.INVALID_OFFSET, lambda: h.parse_offset(values))
    _refused(ERR.INVALID_UPLOAD_LENGTH, lambda: h.parse_length(values))


# -- Upload-Limit -----------------------------------------------------------------------


def test_limits_exist_from_version_6_with_the_age_key_each_names() -> None:
    for number in (3, 4, 5):
        assert h.format_limits(VERSIONS[number], max_size=10, max_age=60) == {}
    assert h.format_limits(VERSIONS[6], max_size=10, max_age=60.9) == {
        "Upload-Limit": "max-size=10, expires=60"
    }
    for number in (7, 8):
        assert h.format_limits(VERSIONS[number], max_size=10, max_age=60) == {
            "Upload-Limit": "max-size=10, max-age=60"
        }


def test_limits_never_say_a_negative_age_nor_more_than_15_digits() -> None:
    assert h.format_limits(VERSIONS[8], max_size=10**20, max_age=-5) == {
        "Upload-Limit": f"max-size={10**15 - 1}, max-age=0"
    }
    assert h.format_limits(VERSIONS[8], max_size=1, max_age=None) == {"Upload-Limit": "max-size=1"}


# -- representation metadata ------------------------------------------------------------


def _decoded(raw: str | None) -> dict[str, bytes]:
    parsed = parse_metadata([raw]) if raw is not None else None
    return parsed.items if parsed is not None else {}


def test_content_type_and_disposition_become_metadata() -> None:
    raw = h.representation_metadata(
        ["image/jpeg; charset=binary"], ['attachment; filename="scan 1.jpg"'], max_bytes=4096
    )
    assert _decoded(raw) == {"filetype": b"image/jpeg", "filename": b"scan 1.jpg"}


def test_an_rfc_6266_extended_filename_is_decoded() -> None:
    raw = h.representation_metadata(
        [], ["attachment; filename*=UTF-8''%C3%A9tude.dcm"], max_bytes=4096
    )
    assert _decoded(raw) == {"filename": "étude.dcm".encode()}


@pytest.mark.parametrize(
    "content_type",
    [[], ["application/partial-upload"], ["application/offset+octet-stream"], ["a/b", "c/d"]],
)
def test_transfer_media_types_are_not_the_files(content_type: list[str]) -> None:
    assert h.representation_metadata(content_type, [], max_bytes=4096) is None


def test_representation_metadata_obeys_the_metadata_size_limit() -> None:
    long_name = [f'attachment; filename="{"x" * 200}"']
    _refused(ERR.INVALID_METADATA, lambda: h.representation_metadata([], long_name, max_bytes=64))
    raw = h.representation_metadata([], long_name, max_bytes=4096)
    assert raw is not None and raw == "filename " + base64.b64encode(b"x" * 200).decode()
