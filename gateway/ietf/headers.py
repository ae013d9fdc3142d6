"""Strict parsing and formatting of the resumable-upload draft's header fields, per version.

The fields are Structured Fields (RFC 9651): `Upload-Offset`, `Upload-Length` and
`Upload-Draft-Interop-Version` are Integers, `Upload-Complete` (`Upload-Incomplete` in
version 3) a Boolean, `Upload-Limit` a Dictionary this server only sends. As with the
tus headers (gateway/tus/headers.py), every function takes the values of one field
as the HTTP layer saw them, one per line, so repeated lines are refused; so are
parameters on an Item (`?1;a=b`), which no version defines. The drafts say to ignore
an invalid field; refusing it instead tells the client what it got wrong and never
reads a request in a way the client did not mean.
"""

from __future__ import annotations

import base64
import email.message
import re

from gateway.errors import ERR, GatewayError
from gateway.ietf.versions import SUPPORTED, VERSIONS, Version
from gateway.tus import headers as tus

INTEROP_HEADER = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"
_OWS = " \t"
_SF_INTEGER = re.compile(r"[0-9]{1,15}")  # RFC 9651 3.3.1, without the sign


def _single(name: str, values: list[str], err: ERR) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise GatewayError(err, f"The {name} header must be sent once, not {len(values)} times.")
    return values[0].strip(_OWS)


def parse_sf_integer(name: str, values: list[str], err: ERR) -> int | None:
    """A non-negative sf-integer (at most 15 digits); None if the field is absent."""
    value = _single(name, values, err)
    if value is None:
        return None
    if not _SF_INTEGER.fullmatch(value):
        raise GatewayError(
            err, f"The {name} header must be a non-negative integer, got {_shown(value)}."
        )
    return int(value)


def parse_sf_boolean(name: str, values: list[str], err: ERR) -> bool | None:
    """An sf-boolean, `?0` or `?1`; None if the field is absent."""
    value = _single(name, values, err)
    if value is None:
        return None
    if value not in ("?0", "?1"):
        raise GatewayError(err, f"The {name} header must be ?0 or ?1, got {_shown(value)}.")
    return value == "?1"


def parse_interop_version(values: list[str]) -> Version:
    """The version `Upload-Draft-Interop-Version` names; 400 if it is not one served."""
    err = ERR.UNSUPPORTED_INTEROP_VERSION
    supported = ", ".join(map(str, SUPPORTED))
    try:
        number = parse_sf_integer(INTEROP_HEADER, values, err)
    except GatewayError as exc:
        raise GatewayError(err, f"{exc.detail} This server speaks versions {supported}.") from None
    if number is None or number not in VERSIONS:
        raise GatewayError(
            err,
            f"Upload-Draft-Interop-Version {number} is not served; this server speaks "
            f"versions {supported}.",
        )
    return VERSIONS[number]


def complete_field_name(version: Version) -> str:
    return "Upload-Incomplete" if version.incomplete_field else "Upload-Complete"


def parse_complete(version: Version, values: list[str]) -> bool | None:
    """Whether the request ends the upload, from the version's field (given its values);
    None if absent."""
    name = complete_field_name(version)
    flag = parse_sf_boolean(name, values, ERR.INVALID_UPLOAD_COMPLETE)
    if flag is None:
        return None
    return not flag if version.incomplete_field else flag


def complete_field(version: Version, complete: bool) -> dict[str, str]:
    """The version's field saying whether the upload is complete, for a response."""
    flag = not complete if version.incomplete_field else complete
    return {complete_field_name(version): "?1" if flag else "?0"}


def parse_offset(values: list[str]) -> int | None:
    return parse_sf_integer("Upload-Offset", values, ERR.INVALID_OFFSET)


def parse_length(values: list[str]) -> int | None:
    return parse_sf_integer("Upload-Length", values, ERR.INVALID_UPLOAD_LENGTH)


def format_limits(version: Version, *, max_size: int, max_age: float | None) -> dict[str, str]:
    """`Upload-Limit` for versions that define it: the largest upload and, for an upload
    that can still expire, the seconds it has left (never negative)."""
    if not version.lengths_and_limits:
        return {}
    items = [f"max-size={min(max_size, 10**15 - 1)}"]
    if max_age is not None:
        items.append(f"{version.age_key}={max(0, int(max_age))}")
    return {"Upload-Limit": ", ".join(items)}


def representation_metadata(
    content_type: list[str], content_disposition: list[str], *, max_bytes: int
) -> str | None:
    """tus-style Upload-Metadata (`filetype`, `filename`) from the representation metadata
    a creation request may carry (Content-Type, Content-Disposition); None if neither
    says anything. It is sealed with the upload like any other metadata."""
    pairs: list[tuple[str, str]] = []
    media = content_type[0].split(";", 1)[0].strip().lower() if len(content_type) == 1 else ""
    if media and media not in (PARTIAL_UPLOAD, "application/offset+octet-stream"):
        pairs.append(("filetype", media))
    if len(content_disposition) == 1:
        message = email.message.Message()
        message["Content-Disposition"] = content_disposition[0]
        filename = message.get_filename()
        if filename:
            pairs.append(("filename", filename))
    if not pairs:
        return None
    raw = ",".join(f"{key} {_b64(value)}" for key, value in pairs)
    # The tus rules bound it (size, shape) exactly as for metadata a tus client sends.
    parsed = tus.parse_metadata([raw], max_bytes=max_bytes)
    return parsed.raw if parsed is not None else None


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8", "replace")).decode("ascii")


def _shown(value: str, limit: int = 40) -> str:
    return repr(value[:limit]) + ("..." if len(value) > limit else "")
