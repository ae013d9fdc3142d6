"""The hostile vocabulary: values for each header, methods, paths, tokens and broken
chunked bodies that the generator (hostile_gen.py) draws from."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

from loadtests.hostile_targets import Target

NUMBERS = [
    "", " ", "-1", "+5", "1e3", "0x10", "1.5", "00", "0", "\t7 ", "1,2", "1 2", "nan",
    "9223372036854775807", "9223372036854775808", "99999999999999999999999999999",
    "\u0663", "\uff11", "1_0", "-0", "18446744073709551616",
]  # fmt: skip


def number(rng: random.Random, near: int) -> str:
    if rng.random() < 0.4:
        return str(max(0, near + rng.choice([-1, 1, 2, -near, 1 << 20, 1 << 40])))
    return rng.choice(NUMBERS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


METADATA = [
    "filename", "filename !!!", "a b c", ",", ",,", " ", "filename " + b64(b"\xff\xfe\x00"),
    "\u00e9 dGVzdA==", "a YQ==,a YQ==", "filename " + b64(b"x" * 5000), "k" * 300 + " YQ==",
    "filename dGVzdA", "filename ====", "filename dGVzdA==,is_confidential",
    "filename dGVzdA==, filetype " + b64(b"application/dicom"),
]  # fmt: skip

CHECKSUMS = [
    "sha1", "sha1 ", "md5 !!!!", "sha256 " + b64(b"short"), "unknown aGVsbG8=", "crc32 AAAA",
    "sha512 " + b64(bytes(64)), "sha1 " + b64(bytes(20)), "SHA1 " + b64(bytes(20)),
    "crc32c " + b64(bytes(4)), "sha256 " + b64(bytes(32)) + " extra", "md5 " + b64(bytes(16)),
]  # fmt: skip

CONTENT_TYPES = [
    "application/offset+octet-stream", "application/offset+octet-stream; charset=x",
    "text/plain", "", "application/partial-upload", "multipart/form-data; boundary=x",
    "application/offset+octet-stream, text/plain", "application/json", "*/*",
]  # fmt: skip

RANGES = [
    "bytes=0-0", "bytes=-1", "bytes=5-", "bytes=0-1,2-3", "bytes=9999999999999999999-",
    "bytes=-0", "bytes=10-5", "items=0-1", "bytes=", "bytes=--1", "bytes=0-99999999999999999999",
    "bytes=1-1, 1-1", "bytes = 0-1", "bytes=-99999999999999999999", "bytes=0-1;x",
]  # fmt: skip

INTEROP = ["3", "4", "5", "6", "7", "8", "9", "2", "0", "-1", "", "?1", "8, 8", "8.0", "1" * 30]
BOOLEANS = ["?0", "?1", "?2", "1", "true", "", ";", "?1;x=1", "?1, ?0", "?"]
RESUMABLE = ["1.0.0", "0.2.2", "", "1.0.0, 1.0.0", "1.0", "1.0.0 ", "2.0.0"]
CONCAT_WORDS = ["partial", "final;", "final; ", "partialx", "final", "final;;", "Partial"]
TRANSFER = ["chunked", "gzip", "gzip, chunked", "chunked, chunked", "identity", "Chunked", "x"]
EXPECT = ["100-continue", "100-Continue", "200-ok", ""]
CONNECTION = ["close", "keep-alive", "upgrade", "Upgrade, HTTP2-Settings", "TE", ""]
UPGRADE = ["websocket", "h2c", "HTTP/2.0", "tls/1.3"]
DISPOSITION = [
    'attachment; filename="a.dcm"', "attachment; filename*=UTF-8''%E2%82%AC.dcm",
    "attachment; filename=", "inline", 'attachment; filename="../../etc/passwd"', ";;;",
]  # fmt: skip

METHODS = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    "PROPFIND", "MKCOL", "LOCK", "SEARCH", "QUERY", "patch", "Post", "FOO", "X" * 300,
    "PATCH\x00", "GET /", "",
]  # fmt: skip

VERSIONS = ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 x", "", "http/1.1", "HTTP/1.01"]

SPECIAL_PATHS = [
    "/files/", "/files", "/files//", "/files/../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2F..%2Fetc%2Fpasswd", "/files/%00", "/files/%ZZ", "/files/\u00e9", "*", "/",
    "/files/" + "A" * 8000, "/files/;", "/files/..\\..\\windows", "/admin/tokens",
    "/admin/keys", "/audit", "/metrics", "/healthz", "/readyz", "/ui/", "/ui/../../etc",
    "/.well-known/jwks.json", "/files/?x=" + "%" * 50, "//files/", "/files/%252e%252e",
    "/files/" + "%41" * 22, "/files/" + "Zz" * 11 + "/grants/" + "x" * 40,
]  # fmt: skip


def path_for(rng: random.Random, target: Target, others: list[Target]) -> str:
    """A hostile path built on a real upload's id, or one of the special ones."""
    other = rng.choice(others)
    uid = target.upload_id
    shapes: list[Callable[[], str]] = [
        lambda: other.path,  # another principal's, finished or terminated upload
        lambda: target.path + "/",
        lambda: target.path + "/..",
        lambda: target.path + "/manifest",
        lambda: target.path + "/grants",
        lambda: target.path + "/grants/" + uid,
        lambda: target.path + "%2F..%2F" + other.upload_id,
        lambda: "/files/" + uid[:-1],
        lambda: "/files/" + uid + "x",
        lambda: "/files/" + uid.lower(),
        lambda: target.path + "?" + "a=" * 200,
        lambda: target.path + "#frag",
        lambda: "http://127.0.0.1" + target.path,
        lambda: "/files/" + "".join(f"%{b:02X}" for b in uid.encode()),
        lambda: "/admin/holds/" + uid,
        lambda: "/files/" + uid + "/" + uid,
        lambda: rng.choice(SPECIAL_PATHS),
    ]
    return rng.choice(shapes)()


def authorization(rng: random.Random, token: str, decoy: str, others: list[str]) -> str:
    """A garbage credential: mangled decoy keys (never the victims' own prefixes), other
    principals' keys, wrong schemes, JWT look-alikes."""
    shapes: list[Callable[[], str]] = [
        lambda: "",
        lambda: "Bearer",
        lambda: "Bearer ",
        lambda: "Basic " + b64(b"admin:admin"),
        lambda: "bearer " + token,
        lambda: "Bearer  " + token,
        lambda: "Bearer " + token + " extra",
        lambda: "Bearer " + decoy[:-1],
        lambda: "Bearer " + decoy + "x",
        lambda: "Bearer " + decoy.upper(),
        lambda: "Bearer gwt_" + "A" * rng.choice([0, 1, 10, 200, 5000]),
        lambda: "Bearer " + rng.choice(others),
        lambda: "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
        lambda: "Bearer eyJ" + "A" * 300 + "." + "B" * 20 + "." + "C" * 20,
        lambda: "Bearer \u00e9\u00e9\u00e9",
        lambda: "Negotiate " + "Y" * 100,
    ]
    return rng.choice(shapes)()


def broken_chunks(rng: random.Random, body: bytes) -> tuple[bytes, bool]:
    """A chunked body with one fault; True when its framing never ends (the socket must
    be closed or shut, or the gateway rightly waits for the rest)."""
    size = f"{len(body):x}".encode()
    faults: list[tuple[bytes, bool]] = [
        (size + b"\r\n" + body + b"\r\n0\r\n\r\n", False),  # well formed
        (b"zz\r\n" + body + b"\r\n0\r\n\r\n", False),
        (b"-1\r\n" + body + b"\r\n0\r\n\r\n", False),
        (size + b"\r\n" + body + b"0\r\n\r\n", False),  # no CRLF after the data
        (size + b";ext=\x01\r\n" + body + b"\r\n0\r\n\r\n", False),
        (b"ffffffffffffffffff\r\n" + body, True),
        (size + b"\r\n" + body + b"\r\n", True),  # no last chunk
        (size + b"\r\n" + body + b"\r\n0\r\nX-Trailer: " + b"t" * 70_000 + b"\r\n\r\n", False),
        (size + b"\r\n" + body + b"\r\n0\r\nUpload-Offset: 0\r\n\r\n", False),
        (size + b"\n" + body + b"\n0\n\n", False),
        (b"1\r\n" + body[:1] + b"\r\n" * 3, True),
        (f"{len(body) + 10:x}".encode() + b"\r\n" + body, True),
    ]
    return rng.choice(faults)


GRANT_BODIES = [
    '{"principal": "load-0001", "expires_in": 3600}',
    '{"principal": "load-0002", "tenant": "other", "expires_in": 60}',
    '{"principal": "", "expires_in": 3600}', '{"principal": "x", "expires_in": true}',
    '{"principal": "x", "expires_in": 1e308}', '{"principal": "x", "expires_in": -1}',
    '{"principal": "x", "expires_in": 99999999999999999999999999}', "[]", "null", "",
    '{"principal": "x", "expires_in": 60, "access": "write"}', '{"a": 1}', "{", '"\\ud800"',
    "[" * 100_000 + "]" * 100_000, '{"principal": "\u00e9\u0000", "expires_in": 60}',
    '{"principal": "' + "p" * 70_000 + '", "expires_in": 60}', "\xff\xfe",
]  # fmt: skip

HOLD_BODIES = [
    '{"case": "CASE-1"}', "", "null", '{"case": ""}', '{"case": 5}',
    '{"case": "' + "c" * 5000 + '"}',
    '{"case": "\\u0000"}', '{"case": "a", "x": 1}', "[]", "{", '{"case": "\\ud800"}',
]  # fmt: skip
TOKEN_BODIES = [
    '{"principal": "load-9999"}', '{"principal": "x", "roles": ["admin"], "expires_in": 60}',
    '{"principal": "x", "roles": ["root"]}', '{"principal": " x"}', '{"principal": ""}',
    '{"principal": "x", "expires_in": 1e400}', '{"principal": "x", "expires_in": true}',
    '{"principal": "x\\u0007"}', '{"principal": "' + "p" * 1000 + '"}', "[]", "7",
]  # fmt: skip
AUDIT_QUERIES = [
    "", "limit=1", "limit=0", "limit=99999999999999999999", "after=-1", "after=" + "9" * 40,
    "since=2020-01-01T00:00:00Z", "since=0001-01-01T00:00:00%2B23:59", "until=garbage",
    "since=9999-12-31T23:59:59-23:59", "upload=" + "u" * 300, "principal=%00", "x=1",
    "limit=1&limit=2", "since=2020-01-01T00:00:00", "until=2020-13-45T99:99:99Z",
    "limit=%D9%A3", "upload=../../etc",
]  # fmt: skip
