"""The keyring file's envelope: its JSON document sealed under a key-encryption key."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gateway.keys.base import KeyUnusable

SEALED_FORMAT = "imgw-keyring-sealed"
_VERSION = 1
_KEY_LEN = 32
_NONCE_LEN = 12
_SALT_LEN = 16
# scrypt cost: about 32 MiB and a few tenths of a second, paid once per process.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SET_KEK = "set GATEWAY_KEK_FILE to the file holding its key"


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class KeyringProtection:
    """The secret from GATEWAY_KEK_FILE: 32 bytes are the key itself, anything else
    is a passphrase stretched with scrypt."""

    secret: bytes
    is_raw_key: bool

    @classmethod
    def from_file(cls, content: bytes) -> KeyringProtection:
        """Exactly 32 bytes: the key as it is; else a passphrase (a final newline dropped)."""
        if len(content) == _KEY_LEN:
            return cls(content, is_raw_key=True)
        return cls(content.rstrip(b"\r\n"), is_raw_key=False)


@dataclass(frozen=True, repr=False)
class KeyringSealer:
    """The derived key and the KDF description written beside each sealed document."""

    aead: AESGCM
    kdf: dict[str, Any]

    @classmethod
    def new(cls, protection: KeyringProtection) -> KeyringSealer:
        """A sealer for a keyring sealed for the first time (a fresh salt)."""
        if protection.is_raw_key:
            return cls(AESGCM(protection.secret), {"name": "raw"})
        kdf = {
            "name": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": _b64(os.urandom(_SALT_LEN)),
        }
        return cls(_derive(protection, kdf), kdf)

    def seal(self, doc: dict[str, Any]) -> bytes:
        """The envelope's bytes; a fresh nonce at every write."""
        nonce = os.urandom(_NONCE_LEN)
        plain = json.dumps(doc).encode()
        envelope = {
            "format": SEALED_FORMAT,
            "version": _VERSION,
            "kdf": self.kdf,
            "nonce": _b64(nonce),
            "ciphertext": _b64(self.aead.encrypt(nonce, plain, SEALED_FORMAT.encode())),
        }
        return json.dumps(envelope, indent=2).encode() + b"\n"


def is_sealed(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("format") == SEALED_FORMAT


def open_envelope(
    envelope: dict[str, Any],
    protection: KeyringProtection | None,
    name: str,
    known: KeyringSealer | None = None,
) -> tuple[dict[str, Any], KeyringSealer]:
    """The keyring document inside `envelope` and the sealer to write it back with.

    `known`, the sealer a previous read returned, is used again when the envelope has
    the same key derivation: a reload then costs no scrypt."""
    if protection is None:
        raise KeyUnusable(f"keyring {name} is encrypted; {_SET_KEK}")
    try:
        if envelope.get("version") != _VERSION:
            raise ValueError
        kdf = envelope["kdf"]
        nonce = base64.b64decode(envelope["nonce"], validate=True)
        ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
        kdf_name = kdf["name"]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KeyUnusable(f"keyring {name} is a malformed sealed envelope") from None
    if known is not None and known.kdf == kdf:
        sealer = known
    elif kdf_name == "raw" and protection.is_raw_key:
        sealer = KeyringSealer(AESGCM(protection.secret), {"name": "raw"})
    elif kdf_name == "scrypt" and not protection.is_raw_key:
        sealer = KeyringSealer(_derive(protection, kdf), kdf)
    else:
        kind = "32-byte key" if kdf_name == "raw" else "passphrase"
        raise KeyUnusable(
            f"keyring {name} was sealed with a {kind}; GATEWAY_KEK_FILE holds the other "
            "kind, so it is not this keyring's key"
        )
    try:
        plain = sealer.aead.decrypt(nonce, ciphertext, SEALED_FORMAT.encode())
    except (InvalidTag, ValueError):
        raise KeyUnusable(
            f"keyring {name} does not open with the key in GATEWAY_KEK_FILE "
            "(wrong key or passphrase)"
        ) from None
    try:
        doc = json.loads(plain)
    except ValueError:
        raise KeyUnusable(f"keyring {name}: the sealed document is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyUnusable(f"keyring {name}: the sealed document is malformed")
    return doc, sealer


def _derive(protection: KeyringProtection, kdf: dict[str, Any]) -> AESGCM:
    try:
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        if n < SCRYPT_N or r < SCRYPT_R or p < SCRYPT_P or len(salt) < _SALT_LEN:
            raise ValueError
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KeyUnusable("the keyring's scrypt parameters are malformed or too weak") from None
    key = Scrypt(salt=salt, length=_KEY_LEN, n=n, r=r, p=p).derive(protection.secret)
    return AESGCM(key)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
