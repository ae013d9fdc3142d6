"""The sealed format's cipher suites: what suite 1 (AES) and suite 2 (SM) are made of."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.types import Buffer

if TYPE_CHECKING:
    from hashlib import _Hash

SUITE_AES256GCM = 1  # AES-256-GCM, HKDF-SHA-256, SHA-256
SUITE_SM4GCM = 2  # SM4-GCM (GB/T 32907), HKDF-SM3, SM3 (GB/T 32905)

TAG_LEN = 16


class Aead(Protocol):
    """The slice of cryptography's AESGCM the format uses."""

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: bytes | None) -> bytes: ...

    def encrypt_into(
        self, nonce: bytes, data: Buffer, associated_data: bytes | None, buf: Buffer
    ) -> int: ...

    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: bytes | None) -> bytes: ...

    def decrypt_into(
        self, nonce: Buffer, data: Buffer, associated_data: bytes | None, buf: Buffer
    ) -> int: ...


class SM4GCM:
    """SM4 in GCM mode (RFC 8998 section 3.1) with AESGCM's interface; OpenSSL's SM4
    through cryptography's Cipher, which has no AEAD class for it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("an SM4 key is 16 bytes")
        self._key = algorithms.SM4(key)

    def encrypt(self, nonce: bytes, data: Buffer, associated_data: bytes | None) -> bytes:
        src = memoryview(data).cast("B")
        out = bytearray(src.nbytes + TAG_LEN)
        self.encrypt_into(nonce, src, associated_data, out)
        return bytes(out)

    def encrypt_into(
        self, nonce: bytes, data: Buffer, associated_data: bytes | None, buf: Buffer
    ) -> int:
        src, dst = memoryview(data).cast("B"), memoryview(buf).cast("B")
        if dst.nbytes != src.nbytes + TAG_LEN:
            raise ValueError(f"buffer must be {src.nbytes + TAG_LEN} bytes")
        encryptor = Cipher(self._key, modes.GCM(nonce)).encryptor()
        if associated_data:
            encryptor.authenticate_additional_data(associated_data)
        # update_into wants block_size - 1 bytes to spare; the tag's room is more than that.
        n = encryptor.update_into(src, dst)
        encryptor.finalize()
        dst[n : n + TAG_LEN] = encryptor.tag
        return n + TAG_LEN

    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: bytes | None) -> bytes:
        view = memoryview(data).cast("B")
        if view.nbytes < TAG_LEN:
            raise InvalidTag()
        tag = bytes(view[view.nbytes - TAG_LEN :])
        decryptor = Cipher(self._key, modes.GCM(bytes(nonce), tag)).decryptor()
        if associated_data:
            decryptor.authenticate_additional_data(associated_data)
        plain = decryptor.update(view[: view.nbytes - TAG_LEN])
        decryptor.finalize()  # raises InvalidTag
        return plain

    def decrypt_into(
        self, nonce: Buffer, data: Buffer, associated_data: bytes | None, buf: Buffer
    ) -> int:
        # update_into would want block_size - 1 bytes to spare past the plaintext.
        dst = memoryview(buf).cast("B")
        if dst.nbytes != memoryview(data).nbytes - TAG_LEN:
            raise ValueError(f"buffer must be {memoryview(data).nbytes - TAG_LEN} bytes")
        dst[:] = self.decrypt(nonce, data, associated_data)
        return dst.nbytes


@dataclass(frozen=True)
class Suite:
    """One suite: its data-key length, its hash (HKDF, HMAC, every digest) and cipher."""

    id: int
    name: str  # as GATEWAY_CRYPTO_SUITE names it
    key_len: int  # the DEK and the derived content and value keys
    hash_name: str  # hashlib's name for the suite's hash
    merkle: str  # the manifest's name for its Merkle tree scheme
    hash_label: str  # the hash's name in messages

    def hash(self, data: Buffer = b"") -> _Hash:
        return hashlib.new(self.hash_name, data)

    def hkdf_hash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.id == SUITE_AES256GCM else hashes.SM3()

    def block_cipher(self, key: bytes) -> algorithms.AES | algorithms.SM4:
        return algorithms.AES(key) if self.id == SUITE_AES256GCM else algorithms.SM4(key)

    def aead(self, key: bytes) -> Aead:
        return AESGCM(key) if self.id == SUITE_AES256GCM else SM4GCM(key)


AES = Suite(SUITE_AES256GCM, "aes", 32, "sha256", "rfc6962-sha256", "SHA-256")
SM = Suite(SUITE_SM4GCM, "sm", 16, "sm3", "rfc6962-sm3", "SM3")
SUITES: dict[int, Suite] = {AES.id: AES, SM.id: SM}
BY_NAME: dict[str, Suite] = {s.name: s for s in SUITES.values()}


def new_dek(suite_id: int) -> bytes:
    """A fresh random data key for an upload sealed under `suite_id`."""
    return os.urandom(suite(suite_id).key_len)


def suite(suite_id: int) -> Suite:
    """The suite with this id; ValueError for one this build does not know."""
    found = SUITES.get(suite_id)
    if found is None:
        raise ValueError(f"unsupported suite {suite_id}")
    return found
