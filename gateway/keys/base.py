"""The key-provider protocols: a DEK never leaves the process unwrapped, and the keys
that wrap and sign are administered (created, rotated, retired) through the provider."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.jws import PublicSigningKey, SigningKey

# A running provider picks up keys that another process (`gateway keys ...`) created,
# rotated or retired within this many seconds, without a restart.
KEY_REFRESH_SECONDS = 5.0


class KeyUnusable(Exception):
    """A key cannot be used: a wrapped key that does not unwrap (wrong KEK, tampered
    blob, unknown KEK version), or a key store that cannot be read or has no usable key."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a KEK; what the catalog's key table stores."""

    kek_id: str
    kek_version: int
    blob: bytes


class SigningState(StrEnum):
    SIGNING = "signing"  # signs new manifests and receipts
    PUBLISHED = "published"  # in the JWKS for what it signed; signs nothing new
    RETIRED = "retired"  # private key destroyed, gone from the JWKS


@dataclass(frozen=True)
class KekVersion:
    version: int
    created: str | None  # RFC 3339, where the provider records it
    current: bool  # wraps new data keys


@dataclass(frozen=True)
class SigningKeyInfo:
    kid: str
    alg: str
    state: SigningState
    created: str | None


class KeyProvider(Protocol):
    @property
    def kek_id(self) -> str: ...

    def wrap(self, dek: bytes, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        """Wrap a DEK (32 bytes for suite 1, 16 for suite 2) under the current KEK
        version, bound to upload and dek id."""

    def unwrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> bytes:
        """Return the DEK, or raise KeyUnusable if anything does not match."""

    def rewrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        """Re-wrap under the current KEK version (rotation) without touching data."""

    def check(self) -> None:
        """Raise KeyUnusable unless keys are usable now (for /readyz)."""

    def warnings(self) -> list[str]:
        """What weakens the keys' protection (for /readyz and the start-up log)."""

    def signing_key(self) -> SigningKey:
        """The current signing key (manifests, deletion receipts)."""

    def public_signing_keys(self) -> list[PublicSigningKey]:
        """Every published verification key, the current one marked (for the JWKS)."""

    def sm2_signing_key(self) -> SigningKey:
        """The current SM2 key (suite-2 manifests, MANIFEST.md "SM2"); KeyUnusable if the
        provider has none or cannot hold one (PKCS#11: KEYS.md)."""

    def public_sm2_keys(self) -> list[PublicSigningKey]:
        """Every published SM2 verification key, the current one marked."""


class KeyAdmin(Protocol):
    """What `gateway keys ...` does to a provider; safe while gateways use it, which
    see the change within KEY_REFRESH_SECONDS."""

    def init(self) -> list[str]:
        """Create the keys that are missing; returns what was created (names, no secrets)."""

    def kek_versions(self) -> list[KekVersion]: ...

    def rotate(self) -> int:
        """Add a KEK version that wraps new data keys from now on; returns it."""

    def signing_keys(self) -> list[SigningKeyInfo]: ...

    def rotate_signing(self) -> str:
        """Make a new signing key current; the old one stays published. Returns its kid."""

    def retire_signing(self, kid: str) -> None:
        """Destroy a published key's private half and withdraw it from the JWKS; refuses
        the current signing key (KeyUnusable)."""

    def refresh(self) -> None:
        """Read the keys again now (changes made by another process)."""


class AdministeredProvider(KeyProvider, KeyAdmin, Protocol):
    """A provider `gateway keys ...` can administer (both built-in ones)."""


WRAP_LABEL = b"imgw-keyring/v1/wrap"
SM4_KEK_LABEL = b"imgw-keyring/v1/sm4-kek"
# A data key's length says its suite (FORMAT.md): AES-256-GCM's and SM4-GCM's.
DEK_LENGTHS = (32, 16)


def sm4_kek(kek: bytes) -> bytes:
    """The SM4 key that wraps suite-2 data keys under a KEK version: HKDF-SM3 of the
    version's key, so each version has one and rotation covers both suites."""
    return HKDF(algorithm=hashes.SM3(), length=16, salt=None, info=SM4_KEK_LABEL).derive(kek)


def wrap_aad(upload_id: str, dek_id: bytes, version: int) -> bytes:
    """The associated data a provider binds a wrapped data key to: its upload, its DEK id
    and the KEK version, so a blob copied to another row or relabelled with another version
    fails to unwrap. dek_id needs no length prefix: only the fixed-size version follows."""
    uid = upload_id.encode()
    if len(uid) > 0xFF:
        raise ValueError("upload id longer than 255 bytes")
    return WRAP_LABEL + bytes([len(uid)]) + uid + bytes(dek_id) + struct.pack(">I", version)
