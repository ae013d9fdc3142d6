"""Strict parsing of tus 1.0.0 request headers into typed values or GatewayErrors."""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
import secrets
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from gateway import checksums
from gateway.errors import ERR, GatewayError

# Every function takes the list of values the HTTP layer saw for one header name
# (one entry per header line), so duplicate lines are visible and rejected: two
# Upload-Offset lines that disagree are a request smuggling hazard, and RFC 9110
# section 5.3 lets intermediaries fold them into "a, b", which we reject as well.

TUS_VERSION = "1.0.0"

# Upload-Length and Upload-Offset are sizes in bytes; int64 is what tusd and the
# other reference servers use, so anything longer cannot be a real upload.
MAX_INT_DIGITS = 19
MAX_INT = 2**63 - 1

MAX_CONCAT_URLS = 1000
MAX_CONCAT_BYTES = 64 * 1024

_DIGITS = re.compile(r"[0-9]+")
# 128-bit random ids are 22 base64url characters; allow a little room for ids
# minted by an older scheme, but never dots, slashes or percent signs, so an id
# can always be used as a path component and a storage key as-is.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{22,32}")

# RFC 9110 section 5.6.3: optional whitespace around a field value is SP / HTAB.
_OWS = " \t"


def _shown(value: str, limit: int = 40) -> str:
    """Quote client input for an error message: escaped and cut short."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


def _has_control(value: str) -> bool:
    """True if value holds C0 controls or DEL (CR, LF and NUL enable header smuggling)."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def _is_visible_ascii(value: str) -> bool:
    """True if every character is VCHAR (RFC 5234): printable ASCII without space."""
    return all(0x21 <= ord(ch) <= 0x7E for ch in value)


def _single(name: str, values: list[str], err: ERR) -> str | None:
    """Return the one value of a header, None if absent; several lines are an error."""
    if not values:
        return None
    if len(values) > 1:
        raise GatewayError(err, f"The {name} header must be sent once, not {len(values)} times.")
    return values[0].strip(_OWS)


def _single_bounded(name: str, values: list[str], err: ERR, max_bytes: int) -> str | None:
    """`_single`, and the value at most `max_bytes` long, with no control characters."""
    value = _single(name, values, err)
    if value is None:
        return None
    if len(value) > max_bytes:
        raise GatewayError(
            err, f"The {name} header must be at most {max_bytes} bytes, got {len(value)}."
        )
    if _has_control(value):
        raise GatewayError(err, f"The {name} header must not contain control characters.")
    return value


def _b64decode_strict(value: str) -> bytes | None:
    """Decode canonical, padded standard base64 (RFC 4648 section 4); None if it is not."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # ValueError also covers non-ASCII input, which b64decode refuses outright.
        return None
    # Round-tripping rejects what validate=True lets through: non-zero pad bits
    # ("YR==" for "a"), so each byte string has exactly one accepted spelling.
    if base64.b64encode(decoded).decode("ascii") != value:
        return None
    return decoded


def parse_tus_resumable(values: list[str]) -> None:
    """Require exactly one Tus-Resumable: 1.0.0 (callers skip this for OPTIONS)."""
    # tus 1.0.0, Tus-Resumable: it MUST be in every request and response except
    # OPTIONS; an unsupported version MUST get 412 with a Tus-Version header.
    headers = {"Tus-Version": TUS_VERSION}
    if not values:
        raise GatewayError(
            ERR.UNSUPPORTED_VERSION,
            f"The Tus-Resumable header is required; this server speaks tus {TUS_VERSION}.",
            headers=headers,
        )
    if len(values) > 1:
        raise GatewayError(
            ERR.UNSUPPORTED_VERSION,
            f"The Tus-Resumable header must be sent once, not {len(values)} times.",
            headers=headers,
        )
    version = values[0].strip(_OWS)
    if version != TUS_VERSION:
        raise GatewayError(
            ERR.UNSUPPORTED_VERSION,
            f"tus version {_shown(version)} is not supported; this server speaks tus "
            f"{TUS_VERSION}.",
            headers=headers,
        )


def parse_non_negative_int(name: str, values: list[str], err: ERR) -> int | None:
    """Parse a header holding one non-negative int64 in plain decimal; None if absent."""
    value = _single(name, values, err)
    if value is None:
        return None
    # tus 1.0.0 defines Upload-Length and Upload-Offset as "a non-negative
    # integer". We accept only ASCII digits: int() would also take "+5", "1_0",
    # " 5" and Arabic-Indic digits, which other parsers on the path may read
    # differently. Leading zeros are refused so that every number has exactly one
    # spelling, which keeps comparisons with stored values unambiguous.
    if not _DIGITS.fullmatch(value):
        raise GatewayError(
            err, f"The {name} header must be a non-negative decimal integer, got {_shown(value)}."
        )
    if len(value) > 1 and value[0] == "0":
        raise GatewayError(
            err, f"The {name} header must not have leading zeros, got {_shown(value)}."
        )
    if len(value) > MAX_INT_DIGITS or int(value) > MAX_INT:
        raise GatewayError(err, f"The {name} header must be at most {MAX_INT} (2**63 - 1).")
    return int(value)


def parse_upload_length(values: list[str]) -> int | None:
    """Parse Upload-Length: the total size of the upload in bytes."""
    return parse_non_negative_int("Upload-Length", values, ERR.INVALID_UPLOAD_LENGTH)


def parse_upload_offset(values: list[str]) -> int | None:
    """Parse Upload-Offset: the byte offset a PATCH or HEAD refers to."""
    return parse_non_negative_int("Upload-Offset", values, ERR.INVALID_OFFSET)


def parse_defer_length(values: list[str]) -> bool:
    """Parse Upload-Defer-Length: absent is False, exactly "1" is True."""
    value = _single("Upload-Defer-Length", values, ERR.INVALID_UPLOAD_DEFER_LENGTH)
    if value is None:
        return False
    # tus 1.0.0, Creation with Upload-Defer-Length: "Its value MUST be 1."
    if value != "1":
        raise GatewayError(
            ERR.INVALID_UPLOAD_DEFER_LENGTH,
            f'The Upload-Defer-Length header must be "1", got {_shown(value)}.',
        )
    return True


@dataclass(frozen=True)
class Metadata:
    """Upload-Metadata as sent (raw, for echoing on HEAD) and decoded."""

    raw: str
    items: dict[str, bytes]


def parse_metadata(
    values: list[str],
    *,
    max_bytes: int = 4096,
    max_pairs: int = 64,
    max_key_len: int = 128,
) -> Metadata | None:
    """Parse Upload-Metadata ("key base64value" pairs, comma-separated); None if absent."""
    # Limits come first so an oversized header costs nothing to refuse; we store
    # and echo the raw value on HEAD, so it must stay small.
    raw = _single_bounded("Upload-Metadata", values, ERR.INVALID_METADATA, max_bytes)
    if raw is None:
        return None
    if raw == "":
        return Metadata(raw="", items={})
    pairs = raw.split(",")
    if len(pairs) > max_pairs:
        raise GatewayError(
            ERR.INVALID_METADATA,
            f"The Upload-Metadata header may hold at most {max_pairs} pairs, got {len(pairs)}.",
        )
    items: dict[str, bytes] = {}
    for pair in pairs:
        # tus 1.0.0, Upload-Metadata: "The key and value MUST be separated by a
        # space. The key MUST NOT contain spaces and commas and MUST NOT be empty.
        # [...] The value MAY be empty. In these cases, the space [...] MAY be left
        # out." Clients join pairs with a bare ",", so no whitespace is skipped: a
        # stray space would otherwise shift a value into the key position.
        key, _, encoded = pair.partition(" ")
        if not key:
            raise GatewayError(
                ERR.INVALID_METADATA,
                f"Upload-Metadata keys must not be empty, got the pair {_shown(pair)}.",
            )
        if len(key) > max_key_len:
            raise GatewayError(
                ERR.INVALID_METADATA,
                f"Upload-Metadata keys must be at most {max_key_len} characters, "
                f"got {_shown(key)}.",
            )
        # The spec says keys SHOULD be ASCII; we make it MUST so keys are safe to
        # log and to store without any encoding question.
        if not _is_visible_ascii(key):
            raise GatewayError(
                ERR.INVALID_METADATA,
                f"Upload-Metadata keys must be printable ASCII, got {_shown(key)}.",
            )
        if " " in encoded:
            raise GatewayError(
                ERR.INVALID_METADATA,
                f"Upload-Metadata pairs must be a key, one space and a base64 value, "
                f"got {_shown(pair)}.",
            )
        decoded = _b64decode_strict(encoded)
        if decoded is None:
            raise GatewayError(
                ERR.INVALID_METADATA,
                f"The Upload-Metadata value for {_shown(key)} must be padded standard base64.",
            )
        # tus 1.0.0: "All keys MUST be unique."
        if key in items:
            raise GatewayError(
                ERR.INVALID_METADATA, f"The Upload-Metadata key {_shown(key)} appears twice."
            )
        items[key] = decoded
    return Metadata(raw=raw, items=items)


@dataclass(frozen=True)
class ChecksumHeader:
    """Upload-Checksum: the algorithm name and the raw (decoded) digest."""

    algorithm: str
    digest: bytes


def parse_upload_checksum(values: list[str], supported: Collection[str]) -> ChecksumHeader | None:
    """Parse Upload-Checksum ("<algorithm> <base64 digest>"); None if absent.

    Every name in supported must be known to gateway.checksums (KeyError otherwise).
    """
    value = _single("Upload-Checksum", values, ERR.INVALID_CHECKSUM)
    if value is None:
        return None
    if _has_control(value):
        raise GatewayError(
            ERR.INVALID_CHECKSUM, "The Upload-Checksum header must not contain control characters."
        )
    # tus 1.0.0, Checksum extension: "The header MUST consist of the name of the
    # used checksum algorithm and the Base64 encoded checksum separated by a space."
    algorithm, _, encoded = value.partition(" ")
    if not algorithm or not encoded or " " in encoded:
        raise GatewayError(
            ERR.INVALID_CHECKSUM,
            f"The Upload-Checksum header must be '<algorithm> <base64 digest>', "
            f"got {_shown(value)}.",
        )
    # Names are compared as sent: the spec excludes uppercase from algorithm names,
    # so "SHA1" is not an alias of "sha1". The spec asks for 400 here, which is
    # what UNSUPPORTED_CHECKSUM_ALGORITHM maps to.
    if algorithm not in supported:
        raise GatewayError(
            ERR.UNSUPPORTED_CHECKSUM_ALGORITHM,
            f"Checksum algorithm {_shown(algorithm)} is not supported; use one of "
            f"{', '.join(supported)}.",
        )
    digest = _b64decode_strict(encoded)
    if digest is None:
        raise GatewayError(
            ERR.INVALID_CHECKSUM, "The Upload-Checksum digest must be padded standard base64."
        )
    # A digest of another length can never match the body: that is a checksum mismatch
    # (460), as tusd and the tus compliance suite have it, answered before the body is
    # read. The value is at most max_header_bytes long, so decoding it first costs little.
    size = checksums.digest_size(algorithm)
    if len(digest) != size:
        raise GatewayError(
            ERR.CHECKSUM_MISMATCH,
            f"A {algorithm} digest is {size} bytes; this one is {len(digest)}, so it cannot "
            "match the body.",
        )
    return ChecksumHeader(algorithm=algorithm, digest=digest)


@dataclass(frozen=True)
class Concat:
    """Upload-Concat: a partial upload, or a final one listing its partials' URLs."""

    kind: Literal["partial", "final"]
    urls: tuple[str, ...]  # empty for "partial"


def parse_concat(values: list[str]) -> Concat | None:
    """Parse Upload-Concat ("partial" or "final;<url> <url> ..."); None if absent."""
    value = _single_bounded("Upload-Concat", values, ERR.INVALID_CONCAT, MAX_CONCAT_BYTES)
    if value is None:
        return None
    # tus 1.0.0, Concatenation extension: partial uploads send "partial"; the final
    # upload sends "final;" and the partial uploads' URLs separated by a space.
    if value == "partial":
        return Concat(kind="partial", urls=())
    if not value.startswith("final;"):
        raise GatewayError(
            ERR.INVALID_CONCAT,
            f"The Upload-Concat header must be 'partial' or 'final;<urls>', got {_shown(value)}.",
        )
    listed = value[len("final;") :]
    if not listed:
        raise GatewayError(
            ERR.INVALID_CONCAT, "A final Upload-Concat must list at least one partial upload URL."
        )
    urls = listed.split(" ")
    if len(urls) > MAX_CONCAT_URLS:
        raise GatewayError(
            ERR.INVALID_CONCAT,
            f"A final Upload-Concat may list at most {MAX_CONCAT_URLS} URLs, got {len(urls)}.",
        )
    for url in urls:
        # An empty entry means two spaces in a row or a space after "final;".
        if not url or not _is_visible_ascii(url):
            raise GatewayError(
                ERR.INVALID_CONCAT,
                "Upload-Concat URLs must be non-empty printable ASCII separated by single "
                f"spaces, got {_shown(url)}.",
            )
    return Concat(kind="final", urls=tuple(urls))


def is_valid_upload_id(value: str) -> bool:
    """True if value has the shape of an upload id: 22 to 32 base64url characters."""
    return _UPLOAD_ID.fullmatch(value) is not None


def upload_id_from_url(url: str, base_path: str) -> str | None:
    """Return the upload id an upload URL names under base_path, or None.

    Accepts "http(s)://host[:port]<base_path><id>" and "<base_path><id>". The host
    is not compared with ours: behind a proxy we cannot know every public name.
    """
    # urlsplit silently drops tabs and newlines (WHATWG URL rules), so an
    # embedded CR/LF would otherwise pass unnoticed.
    if not url or not _is_visible_ascii(url):
        return None
    prefix = base_path if base_path.endswith("/") else base_path + "/"
    if url.startswith("/"):
        path = url
    else:
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port  # raises ValueError for a malformed or out-of-range port
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        if "@" in parts.netloc or parts.query or parts.fragment:
            return None
        path = parts.path
    # A query or fragment on a relative URL ends up in the remainder and fails the
    # id check below, as do "..", percent-escapes and extra slashes.
    if not path.startswith(prefix):
        return None
    upload_id = path[len(prefix) :]
    return upload_id if is_valid_upload_id(upload_id) else None


def format_http_date(ts: float) -> str:
    """Format a Unix timestamp as an RFC 9110 IMF-fixdate (for Upload-Expires)."""
    return email.utils.formatdate(ts, usegmt=True)


def new_upload_id() -> str:
    """Return a fresh upload id: 128 random bits as 22 base64url characters, never
    starting with "-" (a command line would read it as an option)."""
    while True:
        upload_id = secrets.token_urlsafe(16)
        if not upload_id.startswith("-"):
            return upload_id
