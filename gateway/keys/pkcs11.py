"""The PKCS#11 key provider: the KEK and the signing keys never leave the token (an HSM).

A data key is wrapped with AES-GCM inside the token under the current KEK version N:
a random 96-bit IV, a 128-bit tag, AAD binding the upload id, the DEK id and N exactly as
the keyring's; the blob is IV || ciphertext || tag. Manifests are signed in the token
(EDDSA, or ECDSA over SHA-256 for ES256). The objects are described in pkcs11_objects.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, GCMParams, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from gateway.config import Settings
from gateway.jws import ALG_ED25519, ALG_ES256, SIGNATURE_LEN, PublicSigningKey
from gateway.keys import pkcs11_objects as objects
from gateway.keys.base import (
    DEK_LENGTHS,
    KEY_REFRESH_SECONDS,
    KekVersion,
    KeyUnusable,
    SigningKeyInfo,
    SigningState,
    WrappedKey,
    wrap_aad,
)
from gateway.keys.pkcs11_objects import Listing
from gateway.keys.pkcs11_sessions import TokenSessions

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
# What the token answers for a GCM tag that does not verify (SoftHSM: GeneralError).
_NOT_VERIFIED = (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange)
_STALE = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)
# An operation on a found key. Any: python-pkcs11 adds encrypt/decrypt/sign to key
# objects as mixins at run time, so get_key's declared Key type has none of them.
_KeyOp = Callable[[Any], bytes]


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
        self._listing = Listing(0, frozenset(), ())
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
        # Suite-2 (16-byte) data keys too are wrapped by the token's AES-GCM KEK: SM4 is
        # only ever a vendor-defined mechanism, and SoftHSM2 has none (KEYS.md).
        if len(dek) not in DEK_LENGTHS:
            raise ValueError("a DEK must be 32 bytes (suite 1) or 16 bytes (suite 2)")
        version = self._fresh().current
        if version is None:
            raise KeyUnusable(f"{self._kek_where()}: no KEK; run `gateway keys init`")
        nonce = os.urandom(_NONCE_LEN)
        params = GCMParams(nonce, wrap_aad(upload_id, dek_id, version), _TAG_LEN * 8)
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
        if len(blob) - _NONCE_LEN - _TAG_LEN not in DEK_LENGTHS:
            raise KeyUnusable("wrapped key has the wrong length")
        try:
            aad = wrap_aad(upload_id, dek_id, version)
            params = GCMParams(blob[:_NONCE_LEN], aad, _TAG_LEN * 8)
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
        if len(dek) != len(blob) - _NONCE_LEN - _TAG_LEN:
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

    def sm2_signing_key(self) -> TokenSigningKey:
        # Neither PKCS#11 3.x nor SoftHSM2 defines an SM2 mechanism; a private SM2 key
        # held beside the token would break this provider's promise (KEYS.md, "SM2").
        raise KeyUnusable(
            f"{self._signing_where()}: the PKCS#11 provider cannot sign SM2 (no PKCS#11 "
            "mechanism for it), so it cannot sign suite-2 manifests; use "
            "GATEWAY_KEY_PROVIDER=keyring with GATEWAY_KEK_FILE for suite 2"
        )

    def public_sm2_keys(self) -> list[PublicSigningKey]:
        return []

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
                created.append(f"{self._signing_alg} signing key {self._generate_pair(listing)}")
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
                try:
                    with self._sessions.session() as lent:
                        objects.destroy_private(lent.session, self._signing_label, kid)
                except p11e.PKCS11Error as e:
                    raise KeyUnusable(
                        f"{self._signing_where()}: cannot retire {kid} ({_name(e)})"
                    ) from None
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
            out.append(SigningKeyInfo(p.kid, p.alg, state, objects.created(p.kid)))
        return out

    def refresh(self) -> None:
        """List the token's objects again (keys made or removed by another process)."""
        with self._lock:
            self._list()

    # internals

    def _fresh(self) -> Listing:
        """The listing, re-read when older than refresh_seconds (keys changed elsewhere)."""
        stale = time.monotonic() - self._listed_at >= self._refresh_seconds
        # Only one thread re-lists; the others go on with the listing they have.
        if stale and self._lock.acquire(blocking=False):
            try:
                self._list()
            finally:
                self._lock.release()
        return self._listing

    def _list(self) -> Listing:
        """Read our objects from the token; call with self._lock held."""
        try:
            with self._sessions.session() as lent:
                self._listing = objects.list_objects(
                    lent.session,
                    self._kek_label,
                    self._signing_label,
                    self._listing.generation + 1,
                )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._where}: cannot list keys ({_name(e)})") from None
        except ValueError as e:
            raise KeyUnusable(f"{self._signing_where()}: {e}") from None
        self._listed_at = time.monotonic()
        return self._listing

    def _with_kek(self, version: int, op: _KeyOp) -> bytes:
        return self._with_object(
            ObjectClass.SECRET_KEY, self._kek_label, objects.kek_id(version), op
        )

    def _with_object(self, cls: ObjectClass, label: str, id_: bytes, op: _KeyOp) -> bytes:
        """Run op on the object, in the provider's session; objects are found once per
        session and listing, and one destroyed meanwhile (a stale handle) is looked up
        once more. Two objects under one label and id (two rotations at once made the
        same KEK version) are both tried, in turn, on a tag that does not verify: a key
        wrapped under either unwraps."""
        with self._sessions.session() as lent:
            for attempt in (1, 2):
                if lent.generation != self._listing.generation:
                    lent.objects.clear()
                    lent.generation = self._listing.generation
                key = (cls, label, id_)
                found = lent.objects.get(key)
                if found is None:
                    template = {Attribute.CLASS: cls, Attribute.LABEL: label, Attribute.ID: id_}
                    found = tuple(lent.session.get_objects(template))
                    if not found:
                        raise KeyUnusable(
                            f"{self._where}: no key labelled {label!r} with id {id_.hex()}"
                        )
                    lent.objects[key] = found
                try:
                    return _first_verified(found, op)
                except _STALE:
                    lent.objects.pop(key, None)
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _generate_kek(self, version: int) -> None:
        try:
            with self._sessions.session() as lent:
                objects.generate_kek(lent.session, self._kek_label, version)
        except p11e.PKCS11Error as e:
            raise KeyUnusable(f"{self._kek_where()}: cannot create a KEK ({_name(e)})") from None

    def _generate_pair(self, listing: Listing) -> str:
        taken = {p.kid for p in listing.pairs}
        try:
            with self._sessions.session() as lent:
                return objects.generate_pair(
                    lent.session, self._signing_label, self._signing_alg, taken
                )
        except p11e.PKCS11Error as e:
            raise KeyUnusable(
                f"{self._signing_where()}: cannot create a {self._signing_alg} key ({_name(e)})"
            ) from None

    def _kek_where(self) -> str:
        return f"{self._where}, KEK label {self._kek_label!r}"

    def _signing_where(self) -> str:
        return f"{self._where}, signing label {self._signing_label!r}"


def _first_verified(found: tuple[Any, ...], op: _KeyOp) -> bytes:
    for obj in found[:-1]:
        try:
            return op(obj)
        except _NOT_VERIFIED:
            continue
    return op(found[-1])


def _name(e: BaseException) -> str:
    return type(e).__name__
