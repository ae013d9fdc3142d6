"""Compact JWS (RFC 7515) with Ed25519 (RFC 9864) or ES256, and JWK Sets (RFC 7517).

What the gateway signs (manifests, deletion receipts) goes through here. A JWS is checked
strictly: exactly the header members alg, kid and typ; the alg the key is bound to; one
encoding per byte string. The SM2 form of a suite-2 manifest (MANIFEST.md, "SM2") has the
same shape with alg "SM2-SM3", which no JOSE registry knows: only a caller that names it
in `algorithms` signs or accepts it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway.sm2 import ALG_SM2, Sm2Error, Sm2PublicKey

# RFC 9864: the fully-specified name; it deprecates the polymorphic "EdDSA" of RFC 8037.
ALG_ED25519 = "Ed25519"
# ECDSA P-256 with SHA-256 (RFC 7518 section 3.4): for tokens without EdDSA.
ALG_ES256 = "ES256"
ALGORITHMS = frozenset({ALG_ED25519, ALG_ES256})
SIGNATURE_LEN = 64  # both: Ed25519's, and ES256's r || s of 32 bytes each
_COORDINATE_LEN = 32
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})

SM2_ALGORITHMS = frozenset({ALG_SM2})

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | Sm2PublicKey


class JWSError(Exception):
    """A JWS or JWK Set failed a check; the message names which."""


class SigningKey(Protocol):
    """A private signing key, wherever it lives (a keyring, an HSM)."""

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str:
        """The JWS alg: ALG_ED25519 or ALG_ES256 (ALG_SM2 for an SM2 key)."""

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of `data`: 64 bytes (ES256 as r || s)."""


@dataclass(frozen=True)
class PublicSigningKey:
    """A verification key as published in the JWKS."""

    kid: str
    alg: str
    key: PublicKey
    current: bool = True  # signs new documents; others stay published for old ones


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class Ed25519SigningKey:
    """A `SigningKey` held in this process."""

    kid: str
    private: Ed25519PrivateKey

    @property
    def alg(self) -> str:
        return ALG_ED25519

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def public(self, *, current: bool = True) -> PublicSigningKey:
        return PublicSigningKey(self.kid, ALG_ED25519, self.private.public_key(), current)


def es256_signature(der: bytes) -> bytes:
    """An ECDSA P-256 signature in DER (as libraries return it) as JWS's r || s."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_COORDINATE_LEN, "big") + s.to_bytes(_COORDINATE_LEN, "big")


# --- compact serialization ------------------------------------------------------------------


def sign(
    payload: bytes, *, typ: str, key: SigningKey, algorithms: frozenset[str] = ALGORITHMS
) -> str:
    """The compact JWS of `payload` with header {alg, kid, typ} (canonical JSON)."""
    if key.alg not in algorithms:
        raise ValueError(f"unsupported alg {key.alg!r}")
    if not isinstance(key.kid, str) or not key.kid:
        raise ValueError("kid must be a non-empty string")
    header = b64url(_canonical_header(key.alg, key.kid, typ))
    body = b64url(payload)
    signature = key.sign(f"{header}.{body}".encode("ascii"))  # RFC 7515 section 5.1 step 5
    if len(signature) != SIGNATURE_LEN:
        raise ValueError(f"signing key {key.kid!r} returned {len(signature)} bytes")
    return f"{header}.{body}.{b64url(signature)}"


def verify(
    token: str,
    *,
    typ: str,
    keys: Mapping[str, PublicSigningKey],
    algorithms: frozenset[str] = ALGORITHMS,
) -> tuple[str, bytes]:
    """Check a compact JWS strictly; returns (kid, payload bytes) or raises JWSError.
    Only the `algorithms` named are accepted, each only with a key bound to it."""
    header_b64, payload_b64, signature_b64 = split(token)
    header = parse_json(b64url_decode(header_b64, "header"), "header")
    if not isinstance(header, dict):
        raise JWSError("malformed JWS header: not a JSON object")
    # Exactly these members: in particular no "crit" (RFC 7515 section 4.1.11), "jku",
    # "jwk" or "x5u", which would let the token pick its own verification key.
    if set(header) != _HEADER_MEMBERS:
        raise JWSError(
            f"JWS header must have exactly alg, kid, typ; has {', '.join(sorted(header))}"
        )
    alg = header["alg"]
    # Only the two algorithms, each only with a key bound to it: anything else ("none",
    # "HS256" keyed with the public key, the deprecated "EdDSA") is algorithm confusion.
    if alg not in algorithms:
        raise JWSError(f"unsupported alg {alg!r}: only {', '.join(sorted(algorithms))}")
    if header["typ"] != typ:
        raise JWSError(f"wrong typ {header['typ']!r}: expected {typ!r}")
    kid = header["kid"]
    if not isinstance(kid, str):
        raise JWSError("malformed JWS header: kid is not a string")
    key = keys.get(kid)
    if key is None:
        raise JWSError(f"unknown kid {kid!r}")
    if key.alg != alg:
        raise JWSError(f"unsupported alg {alg!r} for key {kid!r}, which is {key.alg}")
    payload = b64url_decode(payload_b64, "payload")
    signature = b64url_decode(signature_b64, "signature")
    if len(signature) != SIGNATURE_LEN:
        raise JWSError(f"bad signature: {len(signature)} bytes, {alg} has {SIGNATURE_LEN}")
    signed = f"{header_b64}.{payload_b64}".encode("ascii")
    try:
        if isinstance(key.key, Ed25519PublicKey | Sm2PublicKey):
            key.key.verify(signature, signed)
        else:
            r = int.from_bytes(signature[:_COORDINATE_LEN], "big")
            s = int.from_bytes(signature[_COORDINATE_LEN:], "big")
            key.key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, Sm2Error):
        raise JWSError(f"bad signature (kid {kid!r})") from None
    return kid, payload


def split(token: str) -> tuple[str, str, str]:
    if not isinstance(token, str):
        raise JWSError("malformed JWS: not a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise JWSError(f"malformed JWS: {len(parts)} parts, compact serialization has 3")
    return parts[0], parts[1], parts[2]


def payload_of(token: str) -> bytes:
    """The payload bytes of a compact JWS, unverified."""
    return b64url_decode(split(token)[1], "payload")


def header_of(token: str) -> dict[str, object]:
    """The protected header of a compact JWS, unverified (to report its kid and alg)."""
    header = parse_json(b64url_decode(split(token)[0], "header"), "header")
    if not isinstance(header, dict):
        raise JWSError("malformed JWS header: not a JSON object")
    return header


def _canonical_header(alg: str, kid: str, typ: str) -> bytes:
    # Keys in sorted order and compact separators: the RFC 8785 form of three strings.
    return json.dumps(
        {"alg": alg, "kid": kid, "typ": typ},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def b64url(data: bytes) -> str:
    # RFC 7515 section 2: base64url without padding.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    if (
        not isinstance(text, str)
        or len(text) % 4 == 1
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
    ):
        raise JWSError(f"malformed JWS {what}: not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise JWSError(f"malformed JWS {what}: not base64url without padding") from None
    # Unused trailing bits must be zero, so that each byte string has one encoding only.
    if b64url(data) != text:
        raise JWSError(f"malformed JWS {what}: non-canonical base64url")
    return data


def parse_json(data: bytes, what: str) -> object:
    """Strict JSON: UTF-8, no duplicate member names, no NaN or Infinity."""
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError) as e:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors.
        raise JWSError(f"malformed JWS {what}: {e}") from None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # RFC 7515 section 5.2 step 4 and I-JSON: reject duplicate member names.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# --- JWK / JWKS -----------------------------------------------------------------------------


def jwk(key: PublicSigningKey) -> dict[str, object]:
    """The public JWK: RFC 8037 OKP for Ed25519, RFC 7518 EC P-256 for ES256, and for SM2
    an EC JWK with crv "SM2" (not registered with IANA; MANIFEST.md, "SM2").

    "use" and "key_ops" are both given and agree (RFC 7517 section 4.3 allows that):
    consumers that look at either one see a verify-only signature key. Whether the key
    is current is not in the JWK (RFC 7517 has no member for it); jwks() orders by it.
    """
    common: dict[str, object] = {
        "kid": key.kid,
        "alg": key.alg,
        "use": "sig",
        "key_ops": ["verify"],
    }
    if isinstance(key.key, Ed25519PublicKey):
        raw = key.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), **common}
    if isinstance(key.key, Sm2PublicKey):
        x, y = key.key.raw[:_COORDINATE_LEN], key.key.raw[_COORDINATE_LEN:]
        return {"kty": "EC", "crv": "SM2", "x": b64url(x), "y": b64url(y), **common}
    numbers = key.key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(_COORDINATE_LEN, "big")),
        "y": b64url(numbers.y.to_bytes(_COORDINATE_LEN, "big")),
        **common,
    }


def jwks(keys: Iterable[PublicSigningKey]) -> dict[str, object]:
    """RFC 7517 JWK Set: current keys first, then the ones kept for old signatures."""
    entries = list(keys)
    kids = [k.kid for k in entries]
    if len(set(kids)) != len(kids):
        raise ValueError("duplicate kid in key set")
    ordered = [k for k in entries if k.current] + [k for k in entries if not k.current]
    return {"keys": [jwk(k) for k in ordered]}


def keys_from_jwks(document: Mapping[str, object]) -> dict[str, PublicSigningKey]:
    """Ed25519, P-256 and SM2 verification keys of a JWK Set by kid; others are skipped."""
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise JWSError("JWKS has no keys list")
    result: dict[str, PublicSigningKey] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise JWSError(f"JWKS key {i} is not an object")
        kty, crv = entry.get("kty"), entry.get("crv")
        if (kty, crv) == ("OKP", "Ed25519"):
            alg = ALG_ED25519
        elif (kty, crv) == ("EC", "P-256"):
            alg = ALG_ES256
        elif (kty, crv) == ("EC", "SM2"):
            alg = ALG_SM2
        else:
            continue  # RFC 7517 section 5: other key types are ignored, not errors
        if "d" in entry:
            # A private key in a published set is a leak; refuse to build on it.
            raise JWSError(f"JWKS key {i} contains a private key (d)")
        if "alg" in entry and entry["alg"] != alg:
            continue  # bound to another algorithm (RFC 7517 section 4.4)
        if "use" in entry and entry["use"] != "sig":
            continue
        ops = entry.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JWSError(f"JWKS key {i} has no kid")
        if kid in result:
            raise JWSError(f"JWKS has kid {kid!r} twice")
        key: PublicKey
        if alg == ALG_ED25519:
            key = _ed25519(entry, kid)
        elif alg == ALG_SM2:
            key = _sm2(entry, kid)
        else:
            key = _p256(entry, kid)
        result[kid] = PublicSigningKey(kid, alg, key, current=True)
    return result


def _coordinate(entry: Mapping[str, object], name: str, kid: str, size: int) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str):
        raise JWSError(f"JWKS key {kid!r} has no {name}")
    try:
        raw = b64url_decode(value, name)
    except JWSError:
        raise JWSError(f"JWKS key {kid!r}: {name} is not base64url") from None
    if len(raw) != size:
        raise JWSError(f"JWKS key {kid!r}: {name} is {len(raw)} bytes, expected {size}")
    return raw


def _ed25519(entry: Mapping[str, object], kid: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_coordinate(entry, "x", kid, 32))


def _p256(entry: Mapping[str, object], kid: str) -> ec.EllipticCurvePublicKey:
    x = _coordinate(entry, "x", kid, _COORDINATE_LEN)
    y = _coordinate(entry, "y", kid, _COORDINATE_LEN)
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError:
        raise JWSError(f"JWKS key {kid!r}: not a point on P-256") from None


def _sm2(entry: Mapping[str, object], kid: str) -> Sm2PublicKey:
    x = _coordinate(entry, "x", kid, _COORDINATE_LEN)
    y = _coordinate(entry, "y", kid, _COORDINATE_LEN)
    try:
        return Sm2PublicKey(x + y)
    except Sm2Error:
        raise JWSError(f"JWKS key {kid!r}: not a point on the SM2 curve") from None
