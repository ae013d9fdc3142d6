"""Gateway-Signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (the scheme
Stripe uses). The timestamp is signed with the body, so a receiver that refuses
signatures older than a few minutes cannot be fed a recorded request again later."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Gateway-Signature"
EVENT_ID_HEADER = "Gateway-Event-Id"
TOLERANCE = 300  # seconds a receiver should accept between t and its clock


class InvalidSignature(Exception):
    """The signature header is malformed, too old or too new, or does not match."""


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The Gateway-Signature value for `body` sent at unix time `t`."""
    digest = hmac.new(secret, str(t).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={t},v1={digest.hexdigest()}"


def verify(
    secret: bytes, body: bytes, header: str, *, now: float, tolerance: float = TOLERANCE
) -> None:
    """Check a Gateway-Signature value against `body`; InvalidSignature if it fails.

    Any `v1` entry may match (several are allowed, for a secret being rotated)."""
    t: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSignature("malformed signature header")
        if name == "t":
            if not value.isascii() or not value.isdigit() or len(value) > 12:
                raise InvalidSignature("malformed timestamp")
            t = int(value)
        elif name == "v1":
            signatures.append(value)
    if t is None or not signatures:
        raise InvalidSignature("the header needs t= and v1=")
    if abs(now - t) > tolerance:
        raise InvalidSignature("the timestamp is outside the tolerance")
    expected = sign(secret, body, t).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected.encode(), s.encode()) for s in signatures):
        raise InvalidSignature("no signature matches")
