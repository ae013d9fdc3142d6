"""The PKCS#11 key provider: the KEK and the signing keys never leave the token (an HSM).

Objects in the token (all token objects, private to the user):
- KEK version N: an AES-256 secret key, CKA_LABEL = the KEK label, CKA_ID = N as 4 bytes
  big-endian, sensitive, never extractable, usable only to encrypt and decrypt. A data key
  is wrapped with AES-GCM inside the token: 96-bit random IV, 128-bit tag, AAD binding the
  upload id, the DEK id and N exactly as the keyring does; the blob is IV || ct || tag.
- Signing key: an Ed25519 key pair (ECDSA P-256 where the token lacks EdDSA), CKA_LABEL =
  the signing label, CKA_ID = the kid on both halves; the private half sensitive and never
  extractable. The newest pair with a private half signs, older ones are published;
  a pair whose private half was destroyed is retired.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from gateway.config import Settings
from gateway.jws import ALG_ED25519, ALG_ES256, SIGNATURE_LEN, PublicKey, PublicSigningKey
from gateway.keys.base import (
    KEY_REFRESH_SECONDS,
    KekVersion,
    KeyUnusable,
    SigningKeyInfo,
    SigningState,
    WrappedKey,
)
from gateway.keys.keyring import _aad
from gateway.keys.pkcs11_sessions import TokenSessions

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_ED25519_OID = "1.3.101.112"
# What the token answers for a GCM tag that does not verify (SoftHSM: GeneralError).
_NOT_VERIFIED = (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange)
_STALE = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)


@dataclass(frozen=True)
class _SigningPair:
    kid: str
    alg: str
    public: PublicKey
    has_private: bool


@dataclass(frozen=True)
class _Listing:
    """What the token holds under our labels; replaced whole when re-listed."""

    generation: int
    keks: frozenset[int]  # versions
    pairs: tuple[_SigningPair, ...]  # oldest first

    @property
    def current(self) -> int | None:
        return max(self.keks) if self.keks else None

    @property
    def signer(self) -> _SigningPair | None:
        with_private = [p for p in self.pairs if p.has_private]
        return with_private[-1] if with_private else None


class TokenSigningKey:
    """A signing key whose private half stays in the token."""

    def __init__(self, provider: Pkcs11Provider, kid: str, alg: str) -> None:
        self._provider = provider
        self._kid = kid
        self._alg = alg

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def alg(self) -> str:
        return self._alg

    def sign(self, data: bytes) -> bytes:
        """The raw JWS signature: 64 bytes (Ed25519, or ES256 as r || s)."""
        return self._provider._sign(self._kid, self._alg, data)


class Pkcs11Provider:
    """A `KeyProvider` (and key admin) whose keys live in a PKCS#11 token."""

    def __init__(
        self,
        module: str,
        token_label: str,
        pin: str,
        *,
        kek_label: str = "gateway-kek",
        signing_label: str = "gateway-signing",
        signing_alg: str | None = None,
        refresh_seconds: float = KEY_REFRESH_SECONDS,
    ) -> None:
        """`signing_alg` ("Ed25519" or "ES256") is what new signing keys use; default:
        Ed25519 if the token offers EdDSA, else ES256."""
        self._sessions = TokenSessions(module, token_label, pin)
        self._where = self._sessions.where
        self._kek_label = kek_label
        self._signing_label = signing_label
        self._kek_id = f"pkcs11:{token_label}/{kek_label}"
        if signing_alg is None:
            mechs = self._sessions.mechanisms()
            eddsa = {Mechanism.EDDSA, Mechanism.EC_EDWARDS_KEY_PAIR_GEN} <= mechs
            signing_alg = ALG_ED25519 if eddsa else ALG_ES256
        if signing_alg not in (ALG_ED25519, ALG_ES256):
            raise ValueError(f"signing_alg must be {ALG_ED25519!r} or {ALG_ES256!r}")
        self._signing_alg = signing_alg
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()  # one re-listing or key change at a time
        self._listed_at = 0.0
        self._listing = _Listing(0, frozenset(), ())
        self.refresh()

    @classmethod
    def from_settings(cls, settings: Settings) -> Pkcs11Provider:
        return cls(
            settings.pkcs11_module,
            settings.pkcs11_token,
            settings.pkcs11_user_pin(),
            kek_label=settings.pkcs11_kek_label,
            signing_label=settings.pkcs11_signing_label,
        )

    def __repr__(self) -> str:
        st = self._listing
        return f"Pkcs11Provider(kek_id={self._kek_id!r}, current={st.current})"

    def close(self) -> None:
        self._sessions.close()

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def warnings(self) -> list[str]:
        return []  # the keys are in the token, not beside the data

    # data keys

    def wrap(self, dek: bytes, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        if len(dek) != _KEY_LEN:
            raise ValueError(f"a DEK must be {_KEY_LEN} bytes")
        version = self._fresh().current
        if version is None:
            raise KeyUnusable(f"{self._kek_where()}: no KEK; run `gateway keys init`")
        nonce = os.urandom(_NONCE_LEN)
        params = GCMParams(nonce, _aad(upload_id, dek_id, version), _TAG_LEN * 8)
        try:
            sealed = self._with_kek(
                version,
                lambda k: k.encrypt(
                    bytes(dek), mechanism=Mechanism.AES_GCM, mechanism_param=params
                ),
            )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._kek_where()} v{version}: wrap failed ({_name(e)})") from None
        return WrappedKey(kek_id=self._kek_id, kek_version=version, blob=nonce + bytes(sealed))

    def unwrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> bytes:
        if wrapped.kek_id != self._kek_id:
            raise KeyUnusable(
                f"wrapped under KEK {wrapped.kek_id!r}, this provider is {self._kek_id!r}"
            )
        version = wrapped.kek_version
        if version not in self._listing.keks:
            self.refresh()  # another process may have rotated since we listed
            if version not in self._listing.keks:
                raise KeyUnusable(f"{self._kek_where()}: unknown KEK version {version}")
        blob = bytes(wrapped.blob)
        if len(blob) != _NONCE_LEN + _KEY_LEN + _TAG_LEN:
            raise KeyUnusable("wrapped key has the wrong length")
        try:
            params = GCMParams(blob[:_NONCE_LEN], _aad(upload_id, dek_id, version), _TAG_LEN * 8)
        except (ValueError, struct.error):
            raise KeyUnusable("wrapped key does not verify for this upload and DEK id") from None
        try:
            dek = self._with_kek(
                version,
                lambda k: k.decrypt(
                    blob[_NONCE_LEN:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                ),
            )
        except _NOT_VERIFIED:
            raise KeyUnusable("wrapped key does not verify for this upload and DEK id") from None
        except p11e.PKCS11Error as e:
            raise KeyUnusable(
                f"{self._kek_where()} v{version}: unwrap failed ({_name(e)})"
            ) from None
        if len(dek) != _KEY_LEN:
            raise KeyUnusable("wrapped key does not verify for this upload and DEK id")
        return bytes(dek)

    def rewrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        dek = self.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)
        return self.wrap(dek, upload_id=upload_id, dek_id=dek_id)

    def check(self) -> None:
        listing = self._fresh()
        missing = []
        if listing.current is None:
            missing.append(f"no KEK labelled {self._kek_label!r}")
        if listing.signer is None:
            missing.append(f"no signing key labelled {self._signing_label!r}")
        if missing:
            raise KeyUnusable(f"{self._where}: {' and '.join(missing)}; run `gateway keys init`")
        probe = self.wrap(bytes(_KEY_LEN), upload_id="check", dek_id=b"check")
        if self.unwrap(probe, upload_id="check", dek_id=b"check") != bytes(_KEY_LEN):
            raise KeyUnusable(f"{self._kek_where()} v{listing.current} is not usable")

    # manifest signing

    def signing_key(self) -> TokenSigningKey:
        signer = self._fresh().signer
        if signer is None:
            raise KeyUnusable(f"{self._signing_where()}: no signing key; run `gateway keys init`")
        return TokenSigningKey(self, signer.kid, signer.alg)

    def public_signing_keys(self) -> list[PublicSigningKey]:
        """Every unretired signing key's public half, newest (the current one) first."""
        listing = self._fresh()
        signer = listing.signer
        published = [p for p in reversed(listing.pairs) if p.has_private]
        return [PublicSigningKey(p.kid, p.alg, p.public, p is signer) for p in published]

    def _sign(self, kid: str, alg: str, data: bytes) -> bytes:
        if alg == ALG_ES256:
            data, mechanism = hashlib.sha256(data).digest(), Mechanism.ECDSA
        else:
            mechanism = Mechanism.EDDSA
        try:
            signature = self._with_object(
                ObjectClass.PRIVATE_KEY,
                self._signing_label,
                kid.encode(),
                lambda k: k.sign(data, mechanism=mechanism),
            )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._signing_where()} {kid}: sign failed ({_name(e)})") from None
        # PKCS#11 gives ECDSA signatures as r || s, each the size of the order: JWS's form.
        if len(signature) != SIGNATURE_LEN:
            raise KeyUnusable(f"{self._signing_where()} {kid}: unexpected signature length")
        return bytes(signature)

    # administration (gateway keys ...)

    def init(self) -> list[str]:
        """Create what is missing (KEK version 1, a signing key); what was created."""
        created = []
        with self._lock:
            listing = self._list()
            if listing.current is None:
                self._generate_kek(1)
                created.append(f"KEK {self._kek_label} version 1")
            if listing.signer is None:
                created.append(f"signing key {self._generate_pair(listing)}")
        self.refresh()
        return created

    def rotate(self) -> int:
        """A new KEK version, current from now on; returns it."""
        with self._lock:
            version = (self._list().current or 0) + 1
            self._generate_kek(version)
        self.refresh()
        return version

    def rotate_signing(self) -> str:
        """A new signing key pair; the previous one stays published. Returns its kid."""
        with self._lock:
            kid = self._generate_pair(self._list())
        self.refresh()
        return kid

    def retire_signing(self, kid: str) -> None:
        """Destroy a published key's private half; its public half is kept (retired)."""
        with self._lock:
            listing = self._list()
            pair = next((p for p in listing.pairs if p.kid == kid), None)
            if pair is None:
                raise KeyUnusable(f"{self._signing_where()}: no signing key {kid!r}")
            if pair is listing.signer:
                raise KeyUnusable(
                    f"{kid} is the current signing key; rotate-signing first, then retire it"
                )
            if pair.has_private:
                with self._sessions.session() as lent:
                    template = self._template(ObjectClass.PRIVATE_KEY, kid)
                    for obj in list(lent.session.get_objects(template)):
                        obj.destroy()
        self.refresh()

    def kek_versions(self) -> list[KekVersion]:
        """Every KEK version, oldest first (the token records no creation time)."""
        listing = self._fresh()
        return [KekVersion(v, None, v == listing.current) for v in sorted(listing.keks)]

    def signing_keys(self) -> list[SigningKeyInfo]:
        """Every signing key, oldest first."""
        listing = self._fresh()
        out = []
        for p in listing.pairs:
            if p is listing.signer:
                state = SigningState.SIGNING
            else:
                state = SigningState.PUBLISHED if p.has_private else SigningState.RETIRED
            out.append(SigningKeyInfo(p.kid, p.alg, state, _created(p.kid)))
        return out

    def refresh(self) -> None:
        """List the token's objects again (keys made or removed by another process)."""
        with self._lock:
            self._list()

    # internals

    def _fresh(self) -> _Listing:
        """The listing, re-read when older than refresh_seconds (keys changed elsewhere)."""
        stale = time.monotonic() - self._listed_at >= self._refresh_seconds
        # Only one thread re-lists; the others go on with the listing they have.
        if stale and self._lock.acquire(blocking=False):
            try:
                self._list()
            finally:
                self._lock.release()
        return self._listing

    def _list(self) -> _Listing:
        """Read our objects from the token; call with self._lock held."""
        keks: set[int] = set()
        publics: dict[str, tuple[str, PublicKey]] = {}
        privates: set[str] = set()
        try:
            with self._sessions.session() as lent:
                s = lent.session
                for obj in s.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self._kek_label}
                ):
                    raw_id = bytes(obj[Attribute.ID])
                    if len(raw_id) == 4:
                        keks.add(int.from_bytes(raw_id, "big"))
                for obj in s.get_objects({Attribute.LABEL: self._signing_label}):
                    cls = obj[Attribute.CLASS]
                    kid = bytes(obj[Attribute.ID]).decode("ascii", "replace")
                    if cls == ObjectClass.PUBLIC_KEY:
                        publics[kid] = _public_key(obj)
                    elif cls == ObjectClass.PRIVATE_KEY:
                        privates.add(kid)
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._where}: cannot list keys ({_name(e)})") from None
        except ValueError as e:
            raise KeyUnusable(f"{self._signing_where()}: {e}") from None
        pairs = tuple(
            _SigningPair(kid, alg, public, kid in privates)
            for kid, (alg, public) in sorted(publics.items(), key=lambda kv: _order(kv[0]))
        )
        self._listing = _Listing(self._listing.generation + 1, frozenset(keks), pairs)
        self._listed_at = time.monotonic()
        return self._listing

    def _with_kek(self, version: int, op: Any) -> Any:
        return self._with_object(
            ObjectClass.SECRET_KEY, self._kek_label, version.to_bytes(4, "big"), op
        )

    def _with_object(self, cls: ObjectClass, label: str, id_: bytes, op: Any) -> Any:
        """Run op(object) in a pooled session, finding the object once per session and
        listing; an object destroyed meanwhile (a stale handle) is looked up once more."""
        with self._sessions.session() as lent:
            for attempt in (1, 2):
                if lent.generation != self._listing.generation:
                    lent.objects.clear()
                    lent.generation = self._listing.generation
                objects = lent.objects
                key = (cls, label, id_)
                obj = objects.get(key)
                if obj is None:
                    try:
                        obj = lent.session.get_key(object_class=cls, label=label, id=id_)
                    except p11e.NoSuchKey:
                        raise KeyUnusable(
                            f"{self._where}: no key labelled {label!r} with id {id_.hex()}"
                        ) from None
                    objects[key] = obj
                try:
                    return op(obj)
                except _STALE:
                    objects.pop(key, None)
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _template(self, cls: ObjectClass, kid: str) -> dict[Attribute, Any]:
        return {
            Attribute.CLASS: cls,
            Attribute.LABEL: self._signing_label,
            Attribute.ID: kid.encode(),
        }

    def _generate_kek(self, version: int) -> None:
        try:
            with self._sessions.session() as lent:
                lent.session.generate_key(
                    KeyType.AES,
                    256,
                    id=version.to_bytes(4, "big"),
                    label=self._kek_label,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template=_secret_template(),
                )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._kek_where()}: cannot create a KEK ({_name(e)})") from None

    def _generate_pair(self, listing: _Listing) -> str:
        kid = _new_kid(self._signing_alg, {p.kid for p in listing.pairs})
        if self._signing_alg == ALG_ED25519:
            key_type, gen = KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN
            params = encode_named_curve_parameters(_ED25519_OID)
        else:
            key_type, gen = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
            params = encode_named_curve_parameters("secp256r1")
        try:
            with self._sessions.session() as lent:
                lent.session.generate_keypair(
                    key_type,
                    id=kid.encode(),
                    label=self._signing_label,
                    store=True,
                    mechanism=gen,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    public_template={Attribute.EC_PARAMS: params, Attribute.PRIVATE: False},
                    private_template=_secret_template(),
                )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(
                f"{self._signing_where()}: cannot create a {self._signing_alg} key ({_name(e)})"
            ) from None
        return kid

    def _kek_where(self) -> str:
        return f"{self._where}, KEK label {self._kek_label!r}"

    def _signing_where(self) -> str:
        return f"{self._where}, signing label {self._signing_label!r}"


def _secret_template() -> dict[Attribute, Any]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
    }


def _new_kid(alg: str, taken: set[str]) -> str:
    # 8 hex digits of the creation time (seconds), so kids sort oldest first; bumped past
    # any taken one (two rotations within a second).
    prefix = "ed25519-" if alg == ALG_ED25519 else "es256-"
    stamp = int(time.time())
    while f"{prefix}{stamp:08x}" in taken:
        stamp += 1
    return f"{prefix}{stamp:08x}"


def _order(kid: str) -> tuple[int, str]:
    stamp = kid.rsplit("-", 1)[-1]
    try:
        return int(stamp, 16), kid
    except ValueError:
        return 0, kid  # kids not made by us: oldest, in name order


def _created(kid: str) -> str | None:
    stamp, _ = _order(kid)
    if not stamp:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")


def _public_key(obj: Any) -> tuple[str, PublicKey]:
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


def _octet_string(der: bytes) -> bytes:
    """The content of a short DER OCTET STRING (an EC point is at most 133 bytes)."""
    if len(der) < 2 or der[0] != 0x04 or der[1] != len(der) - 2:
        raise ValueError("CKA_EC_POINT is not a DER OCTET STRING")
    return der[2:]


def _name(e: BaseException) -> str:
    return type(e).__name__
