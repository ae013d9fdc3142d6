"""The tus checksum extension's algorithms: incremental hashers and digest sizes."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol

import crc32c

from gateway.types import Buffer

# tus 1.0.0, Checksum extension: names "MUST only consist of ASCII characters with
# the modification that uppercase characters are excluded". The order is the order
# we advertise in Tus-Checksum-Algorithm; sha1 first because the spec says servers
# SHOULD support it and most clients pick the first algorithm they know. sm3 (GB/T
# 32905) for clients bound to the Chinese national algorithms, whatever the suite.
SUPPORTED: tuple[str, ...] = ("sha1", "sha256", "sha512", "md5", "crc32", "crc32c", "sm3")

# The name under which the data key seals a client's checksum of a whole upload: like
# the plaintext SHA-256, it would tell anyone who can read it whether a known file was sent.
SEALED_NAME = "client_checksum"

_DIGEST_SIZES: dict[str, int] = {
    "sha1": 20,
    "sha256": 32,
    "sha512": 64,
    "md5": 16,
    "crc32": 4,
    "crc32c": 4,
    "sm3": 32,
}


class Hasher(Protocol):
    """The subset of the hashlib interface the upload path needs."""

    # Positional-only, as in hashlib, so hashlib objects satisfy the protocol.
    def update(self, data: Buffer, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """CRC-32 (IEEE, zlib's polynomial) with a running value."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        # Big-endian, the byte order tusd and Uppy/tus-js-client put in Upload-Checksum.
        return self._value.to_bytes(4, "big")


class _Crc32c:
    """CRC-32C (Castagnoli) with a running value; the C extension releases the GIL."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer, /) -> None:
        self._value = int(crc32c.crc32c(data, self._value))

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def new_hasher(algorithm: str) -> Hasher:
    """Return a fresh hasher for a name in SUPPORTED; KeyError for anything else."""
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm in ("sha1", "md5"):
        # These guard against transmission errors, not adversaries; saying so keeps
        # them usable on FIPS-enabled OpenSSL builds that block them otherwise.
        return hashlib.new(algorithm, usedforsecurity=False)
    if algorithm in ("sha256", "sha512", "sm3"):
        return hashlib.new(algorithm)
    raise KeyError(algorithm)


def digest_size(algorithm: str) -> int:
    """Return the raw digest length in bytes; KeyError for an unknown algorithm."""
    return _DIGEST_SIZES[algorithm]


def header_value(algorithm: str, digest: bytes) -> str:
    """The Upload-Checksum form "<algorithm> <base64>" of a digest (MANIFEST.md)."""
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"
