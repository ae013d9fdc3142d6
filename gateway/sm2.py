"""SM2 signatures with SM3 (GB/T 32918.2, GB/T 35276) for suite-2 manifests (MANIFEST.md, "SM2").

The signature is SM2 over e = SM3(Z || M), Z the SM3 of the signer ID "1234567812345678"
(the default of GB/T 35276), the curve parameters and the public key. It is carried as
r || s, 32 bytes each big-endian, like ES256 in a JWS. The arithmetic is GmSSL's, through
gmssl-pyx; this module checks what GmSSL would only report on stderr (lengths, a point off
the curve, r and s out of range) and turns every failure into Sm2Error.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from gmssl_pyx import gmsslext

ALG_SM2 = "SM2-SM3"  # not a JOSE algorithm: no IANA registration exists for SM2
DISTID = b"1234567812345678"
SIGNATURE_LEN = 64
PRIVATE_LEN = 32
PUBLIC_LEN = 64  # x || y, without the 0x04 of an uncompressed point

# The curve of GB/T 32918.5 (OID 1.2.156.10197.1.301) and its base point G.
_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
_G = bytes.fromhex(
    "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"
    "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0"
)
# SubjectPublicKeyInfo up to the point: id-ecPublicKey with the SM2 curve as its
# parameter (as OpenSSL 3 and GmSSL write SM2 keys), then BIT STRING 0x04 || x || y.
_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d03420004")


class Sm2Error(Exception):
    """An SM2 key or signature failed a check; the message names which."""


@dataclass(frozen=True)
class Sm2PublicKey:
    """A point on the SM2 curve, x || y (64 bytes); checked on construction."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != PUBLIC_LEN:
            raise Sm2Error(f"an SM2 public key is {PUBLIC_LEN} bytes, not {len(self.raw)}")
        x = int.from_bytes(self.raw[:32], "big")
        y = int.from_bytes(self.raw[32:], "big")
        if x >= _P or y >= _P or (y * y - (x * x * x + _A * x + _B)) % _P:
            raise Sm2Error("not a point on the SM2 curve")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Sm2Error unless `signature` (r || s) is this key's over `data`, with DISTID."""
        if len(signature) != SIGNATURE_LEN:
            raise Sm2Error(f"an SM2 signature is {SIGNATURE_LEN} bytes, not {len(signature)}")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _N and 0 < s < _N):
            raise Sm2Error("bad signature: r or s out of range")
        try:
            ok = gmsslext.sm2_verify_sm3_digest(self.raw, self.digest(data), _der(r, s))
        except gmsslext.GmsslInnerError:
            ok = False
        if not ok:
            raise Sm2Error("bad signature")

    def digest(self, data: bytes) -> bytes:
        """e = SM3(Z || data), Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA) with
        ID = DISTID (GB/T 32918.2 section 5.5): what is signed for this key."""
        z = gmsslext.sm3_hash(
            (len(DISTID) * 8).to_bytes(2, "big")
            + DISTID
            + _A.to_bytes(32, "big")
            + _B.to_bytes(32, "big")
            + _G
            + self.raw
        )
        return gmsslext.sm3_hash(z + data)

    def spki_der(self) -> bytes:
        return _SPKI_PREFIX + self.raw

    def pem(self) -> str:
        body = base64.b64encode(self.spki_der()).decode("ascii")
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        return "\n".join(["-----BEGIN PUBLIC KEY-----", *lines, "-----END PUBLIC KEY-----"]) + "\n"


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class Sm2SigningKey:
    """A `jws.SigningKey` for SM2, held in this process."""

    kid: str
    private: bytes
    public_key: Sm2PublicKey

    def __post_init__(self) -> None:
        d = int.from_bytes(self.private, "big")
        # GB/T 32918.1: d in [1, n-2], as d + 1 is inverted modulo n when signing.
        if len(self.private) != PRIVATE_LEN or not 0 < d < _N - 1:
            raise Sm2Error("not an SM2 private key")

    @property
    def alg(self) -> str:
        return ALG_SM2

    def sign(self, data: bytes) -> bytes:
        """r || s of SM2 over SM3(Z || data), Z with DISTID; a fresh random k each time."""
        # Z computed here, then GmSSL signs e: its sm2_sign, which computes Z itself, takes
        # some 30 times as long in gmssl-pyx 2.1 (about 11 ms against 0.4 ms).
        der = gmsslext.sm2_sign_sm3_digest(self.private, self.public_key.digest(data))
        r, s = _from_der(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def generate() -> tuple[bytes, bytes]:
    """A new key pair from GmSSL's random source: (private 32 bytes, public 64 bytes)."""
    public, private = gmsslext.sm2_key_generate()
    return private, public


def pem_bundle(keys: list[tuple[str, Sm2PublicKey]]) -> str:
    """PEM SubjectPublicKeyInfo blocks, each preceded by its kid as explanatory text
    (RFC 7468 section 5.2: parsers skip text outside the blocks)."""
    return "".join(f"kid: {kid}\n{key.pem()}" for kid, key in keys)


def _der_int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # a leading 0 keeps it positive
    return b"\x02" + bytes([len(raw)]) + raw


def _der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _from_der(der: bytes) -> tuple[int, int]:
    """(r, s) of the DER SEQUENCE GmSSL returns; strict, short lengths only (< 128)."""
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        raise Sm2Error("malformed DER signature")
    values, i = [], 2
    for _ in range(2):
        if der[i] != 0x02:
            raise Sm2Error("malformed DER signature")
        n = der[i + 1]
        values.append(int.from_bytes(der[i + 2 : i + 2 + n], "big"))
        i += 2 + n
    if i != len(der):
        raise Sm2Error("malformed DER signature")
    return values[0], values[1]
