"""The token objects a PKCS#11 provider uses: how they are made, found and read.

- KEK version N: an AES-256 secret key, CKA_LABEL = the KEK label, CKA_ID = N as 4 bytes
  big-endian; usable only to encrypt and decrypt.
- Signing key: an Ed25519 key pair (EC_EDWARDS_KEY_PAIR_GEN; ECDSA P-256 where the token
  lacks EdDSA), CKA_LABEL = the signing label, CKA_ID = the kid on both halves. The kid
  carries the creation time, so pairs sort oldest first.
Secret and private keys are token objects, private, sensitive and never extractable.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, Session
from pkcs11.util.ec import encode_named_curve_parameters

from gateway.jws import ALG_ED25519, ALG_ES256, PublicKey

_ED25519_OID = "1.3.101.112"  # RFC 8410 id-Ed25519, as CKA_EC_PARAMS names the curve


class HasAttributes(Protocol):
    """A token object's attributes (pkcs11.Object; a mapping in unit tests)."""

    def __getitem__(self, key: Attribute) -> Any: ...


@dataclass(frozen=True)
class SigningPair:
    kid: str
    alg: str
    public: PublicKey
    has_private: bool  # False: retired (the private half was destroyed)


@dataclass(frozen=True)
class Listing:
    """What the token holds under our labels; replaced whole when listed again."""

    generation: int
    keks: frozenset[int]  # versions
    pairs: tuple[SigningPair, ...]  # oldest first

    @property
    def current(self) -> int | None:
        return max(self.keks) if self.keks else None

    @property
    def signer(self) -> SigningPair | None:
        """The newest pair with a private half."""
        with_private = [p for p in self.pairs if p.has_private]
        return with_private[-1] if with_private else None


def kek_id(version: int) -> bytes:
    return version.to_bytes(4, "big")


def list_objects(session: Session, kek_label: str, signing_label: str, generation: int) -> Listing:
    """Our KEK versions and signing pairs; ValueError for a signing key we cannot read."""
    keks: set[int] = set()
    publics: dict[str, tuple[str, PublicKey]] = {}
    privates: set[str] = set()
    for obj in session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: kek_label}
    ):
        raw_id = bytes(obj[Attribute.ID])
        if len(raw_id) == 4:
            keks.add(int.from_bytes(raw_id, "big"))
    for obj in session.get_objects({Attribute.LABEL: signing_label}):
        cls = obj[Attribute.CLASS]
        kid = bytes(obj[Attribute.ID]).decode("ascii", "replace")
        if cls == ObjectClass.PUBLIC_KEY:
            publics[kid] = public_key(obj)
        elif cls == ObjectClass.PRIVATE_KEY:
            privates.add(kid)
    pairs = tuple(
        SigningPair(kid, alg, public, kid in privates)
        for kid, (alg, public) in sorted(publics.items(), key=lambda kv: _order(kv[0]))
    )
    return Listing(generation, frozenset(keks), pairs)


def generate_kek(session: Session, label: str, version: int) -> None:
    session.generate_key(
        KeyType.AES,
        256,
        id=kek_id(version),
        label=label,
        store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template=_secret_template(),
    )


def generate_pair(session: Session, label: str, alg: str, taken: set[str]) -> str:
    """A new signing key pair, newer than the `taken` kids; returns its kid."""
    kid = _new_kid(alg, taken)
    if alg == ALG_ED25519:
        key_type, mechanism = KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN
        params = encode_named_curve_parameters(_ED25519_OID)
    else:
        key_type, mechanism = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
        params = encode_named_curve_parameters("secp256r1")
    session.generate_keypair(
        key_type,
        id=kid.encode(),
        label=label,
        store=True,
        mechanism=mechanism,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={Attribute.EC_PARAMS: params, Attribute.PRIVATE: False},
        private_template=_secret_template(),
    )
    return kid


def destroy_private(session: Session, label: str, kid: str) -> None:
    template = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.LABEL: label,
        Attribute.ID: kid.encode(),
    }
    for obj in list(session.get_objects(template)):
        obj.destroy()


def created(kid: str) -> str | None:
    """When a kid made here was created (RFC 3339); None for others."""
    stamp, _ = _order(kid)
    if not stamp:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def public_key(obj: HasAttributes) -> tuple[str, PublicKey]:
    """(alg, public key) of a public key object, from CKA_EC_POINT: a DER OCTET STRING
    around the point (some tokens give the bare point)."""
    point = bytes(obj[Attribute.EC_POINT])
    if obj[Attribute.KEY_TYPE] == KeyType.EC_EDWARDS:
        raw = point if len(point) == 32 else _octet_string(point)
        return ALG_ED25519, Ed25519PublicKey.from_public_bytes(raw)
    if obj[Attribute.KEY_TYPE] == KeyType.EC:
        raw = point if len(point) == 65 else _octet_string(point)
        return ALG_ES256, ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    raise ValueError("a signing key that is neither Ed25519 nor EC")


def _secret_template() -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }


def _new_kid(alg: str, taken: set[str]) -> str:
    # The creation time (8 hex digits of seconds), past any taken kid's, so kids sort
    # oldest first and the newest is the one just made; then 8 random hex digits: two
    # processes that rotate at once, before either sees the other's key, make two kids.
    prefix = "ed25519" if alg == ALG_ED25519 else "es256"
    stamp = max([int(time.time()), *(_order(kid)[0] + 1 for kid in taken)])
    return f"{prefix}-{stamp:08x}-{secrets.token_hex(4)}"


def _order(kid: str) -> tuple[int, str]:
    parts = kid.split("-")
    if len(parts) == 3 and parts[0] in ("ed25519", "es256") and len(parts[1]) == 8:
        try:
            return int(parts[1], 16), kid
        except ValueError:
            pass
    return 0, kid  # kids not made here: oldest, in name order


def _octet_string(der: bytes) -> bytes:
    """The content of a short DER OCTET STRING (an EC point is at most 133 bytes)."""
    if len(der) < 2 or der[0] != 0x04 or der[1] != len(der) - 2:
        raise ValueError("CKA_EC_POINT is not a DER OCTET STRING")
    return der[2:]
