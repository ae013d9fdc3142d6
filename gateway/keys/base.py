"""The key-provider protocol: a DEK never leaves the process unwrapped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyUnusable(Exception):
    """A key cannot be used: a wrapped key that does not unwrap (wrong KEK, tampered
    blob, unknown KEK version), or a keyring that cannot be read or has no usable key."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a KEK; what the catalog's key table stores."""

    kek_id: str
    kek_version: int
    blob: bytes


class KeyProvider(Protocol):
    @property
    def kek_id(self) -> str: ...

    def wrap(self, dek: bytes, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        """Wrap a 32-byte DEK under the current KEK version, bound to upload and dek id."""

    def unwrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> bytes:
        """Return the DEK, or raise KeyUnusable if anything does not match."""

    def rewrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        """Re-wrap under the current KEK version (rotation) without touching data."""

    def check(self) -> None:
        """Raise KeyUnusable unless keys are usable now (for /readyz)."""

    def warnings(self) -> list[str]:
        """What weakens the keys' protection (for /readyz and the start-up log)."""

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The current manifest-signing key and its key id."""

    def public_signing_keys(self) -> list[tuple[str, Ed25519PublicKey, bool]]:
        """(kid, public key, retired) for every signing key, current ones first."""
