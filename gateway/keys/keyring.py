"""The local keyring: versioned KEKs and manifest-signing keys in one 0600 JSON file."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
import struct
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Settings
from gateway.files import write_atomically
from gateway.jws import Ed25519SigningKey, PublicSigningKey
from gateway.keys.base import KeyUnusable, WrappedKey
from gateway.keys.envelope import KeyringProtection, KeyringSealer, is_sealed, open_envelope

_FORMAT = 1
_WRAP_LABEL = b"imgw-keyring/v1/wrap"
_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
UNPROTECTED = "keys: the keyring is not encrypted (set GATEWAY_KEK_FILE)"


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class _Signer:
    kid: str
    key: Ed25519PrivateKey
    retired: bool


@dataclass(frozen=True, repr=False)
class _State:
    """An immutable snapshot of the keyring; swapped whole so readers need no lock."""

    kek_id: str
    keks: dict[int, AESGCM]
    current: int
    signers: tuple[_Signer, ...]


class LocalKeyring:
    """A `KeyProvider` whose KEKs live in a local file (for one node or for tests)."""

    def __init__(
        self, path: Path, state: _State, protection: KeyringProtection | None = None
    ) -> None:
        self._path = path
        self._state = state
        self._protection = protection
        self._lock = threading.Lock()  # serialises rotations and reloads

    @classmethod
    def open(cls, path: Path, *, protection: KeyringProtection | None = None) -> LocalKeyring:
        """Load the keyring at `path`, creating it (one KEK, one signing key) if absent.

        With `protection` the file is a sealed envelope: a plain keyring is sealed in
        place the first time; without it, a sealed keyring is refused."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # If another process created it meanwhile, its file wins and is loaded below.
            sealer = KeyringSealer.new(protection) if protection is not None else None
            _write(path, _new_document(), sealer, exclusive=True)
        _check_owner_only(path)
        doc, sealer, was_sealed = _load(path, protection)
        if not doc.get("signing_keys") or (sealer is not None and not was_sealed):
            # Files written before signing keys existed get one on first use;
            # a plain keyring opened with a KEK is sealed in place.
            if not doc.get("signing_keys"):
                doc["signing_keys"] = [_new_signing_entry()]
            _write(path, doc, sealer, exclusive=False)
        return cls(path, _parse(doc), protection)

    def __repr__(self) -> str:
        st = self._state
        return (
            f"LocalKeyring(kek_id={st.kek_id!r}, current={st.current}, "
            f"versions={sorted(st.keks)}, signing_keys={len(st.signers)})"
        )

    @property
    def kek_id(self) -> str:
        return self._state.kek_id

    @property
    def sealed(self) -> bool:
        """Whether the keyring file is encrypted under a key from GATEWAY_KEK_FILE."""
        return self._protection is not None

    def warnings(self) -> list[str]:
        return [] if self.sealed else [UNPROTECTED]

    @property
    def current_version(self) -> int:
        return self._state.current

    def wrap(self, dek: bytes, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        if len(dek) != _KEY_LEN:
            raise ValueError(f"a DEK must be {_KEY_LEN} bytes")
        st = self._state
        nonce = os.urandom(_NONCE_LEN)
        aad = _aad(upload_id, dek_id, st.current)
        blob = nonce + st.keks[st.current].encrypt(nonce, bytes(dek), aad)
        return WrappedKey(kek_id=st.kek_id, kek_version=st.current, blob=blob)

    def unwrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> bytes:
        st = self._state
        if wrapped.kek_id != st.kek_id:
            raise KeyUnusable(
                f"wrapped under KEK {wrapped.kek_id!r}, this keyring is {st.kek_id!r}"
            )
        if wrapped.kek_version not in st.keks:
            # Another process may have rotated since we loaded the file.
            st = self._reload()
        aead = st.keks.get(wrapped.kek_version)
        if aead is None:
            raise KeyUnusable(f"unknown KEK version {wrapped.kek_version}")
        blob = bytes(wrapped.blob)
        if len(blob) != _NONCE_LEN + _KEY_LEN + _TAG_LEN:
            raise KeyUnusable("wrapped key has the wrong length")
        try:
            aad = _aad(upload_id, dek_id, wrapped.kek_version)
            return aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], aad)
        except (InvalidTag, ValueError, struct.error):
            raise KeyUnusable("wrapped key does not verify for this upload and DEK id") from None

    def rewrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        dek = self.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)
        return self.wrap(dek, upload_id=upload_id, dek_id=dek_id)

    def rotate(self) -> int:
        """Add a new KEK version, make it current and persist it; returns the version."""
        with self._lock:
            # Re-read first so a rotation by another process is not overwritten.
            doc, sealer, _ = _load(self._path, self._protection)
            version = _parse(doc).current + 1
            doc["keks"].append(_new_kek_entry(version))
            _write(self._path, doc, sealer, exclusive=False)
            self._state = _parse(doc)
            return version

    def check(self) -> None:
        st = self._state
        try:
            probe = self.wrap(bytes(_KEY_LEN), upload_id="check", dek_id=b"check")
            ok = self.unwrap(probe, upload_id="check", dek_id=b"check") == bytes(_KEY_LEN)
        except Exception as e:
            raise KeyUnusable(f"KEK {st.kek_id!r} v{st.current} is not usable") from e
        if not ok:
            raise KeyUnusable(f"KEK {st.kek_id!r} v{st.current} is not usable")

    # manifest signing

    def signing_key(self) -> Ed25519SigningKey:
        """The current (newest unretired) signing key."""
        for s in reversed(self._state.signers):
            if not s.retired:
                return Ed25519SigningKey(s.kid, s.key)
        raise KeyUnusable("the keyring has no unretired signing key")

    def public_signing_keys(self) -> list[PublicSigningKey]:
        """Every signing key's public half; the current one marked (for verifiers)."""
        current = self.signing_key().kid
        return [
            Ed25519SigningKey(s.kid, s.key).public(current=s.kid == current)
            for s in self._state.signers
        ]

    def _reload(self) -> _State:
        with self._lock:
            self._state = _parse(_load(self._path, self._protection)[0])
            return self._state


def open_configured(settings: Settings) -> LocalKeyring:
    """The keyring at settings.keyring_path, sealed under GATEWAY_KEK_FILE if set."""
    secret = settings.kek_secret()
    protection = KeyringProtection.from_file(secret) if secret is not None else None
    return LocalKeyring.open(settings.keyring_path, protection=protection)


def _aad(upload_id: str, dek_id: bytes, version: int) -> bytes:
    # Binds the wrapped key to its upload, its DEK id and the KEK version, so a blob
    # copied to another row or relabelled with another version fails to unwrap.
    # dek_id needs no length prefix: it is followed only by the fixed-size version.
    uid = upload_id.encode()
    if len(uid) > 0xFF:
        raise ValueError("upload id longer than 255 bytes")
    return _WRAP_LABEL + bytes([len(uid)]) + uid + bytes(dek_id) + struct.pack(">I", version)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _new_kek_entry(version: int) -> dict[str, Any]:
    return {"version": version, "key": _b64(os.urandom(_KEY_LEN)), "created": _now()}


def _new_signing_entry() -> dict[str, Any]:
    raw = os.urandom(32)
    return {
        "kid": "ed25519-" + secrets.token_hex(4),
        "private": _b64(raw),
        "created": _now(),
        "retired": None,
    }


def _new_document() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "kek_id": "local-" + secrets.token_hex(4),
        "keks": [_new_kek_entry(1)],
        "signing_keys": [_new_signing_entry()],
    }


def _check_owner_only(path: Path) -> None:
    """Refuse a keyring that anyone but its owner may read or change."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as e:
        raise KeyUnusable(f"cannot read keyring {path}: {e.strerror}") from None
    if mode & 0o077:
        raise KeyUnusable(
            f"keyring {path} has mode {mode:04o}, so other users can reach its keys; "
            f"run: chmod 600 {path}"
        )


def _load(
    path: Path, protection: KeyringProtection | None
) -> tuple[dict[str, Any], KeyringSealer | None, bool]:
    """The keyring document, the sealer to write it back with (None: plain), and
    whether the file was sealed."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise KeyUnusable(f"cannot read keyring {path.name}: {e.strerror}") from None
    except ValueError:
        raise KeyUnusable(f"keyring {path.name} is not valid JSON") from None
    sealer = None
    was_sealed = is_sealed(doc)
    if was_sealed:
        doc, sealer = open_envelope(doc, protection, path.name)
    elif protection is not None:
        sealer = KeyringSealer.new(protection)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise KeyUnusable(f"keyring {path.name} has an unknown format")
    return doc, sealer, was_sealed


def _parse(doc: dict[str, Any]) -> _State:
    # Errors name no values: they could be key material.
    try:
        kek_id = doc["kek_id"]
        if not isinstance(kek_id, str) or not kek_id:
            raise ValueError
        keks: dict[int, AESGCM] = {}
        for entry in doc["keks"]:
            version = entry["version"]
            key = base64.b64decode(entry["key"], validate=True)
            if type(version) is not int or not 0 < version <= 0xFFFFFFFF or version in keks:
                raise ValueError
            if len(key) != _KEY_LEN:
                raise ValueError
            keks[version] = AESGCM(key)
        if not keks:
            raise ValueError
        signers = []
        for entry in doc.get("signing_keys") or ():
            raw = base64.b64decode(entry["private"], validate=True)
            signers.append(
                _Signer(
                    kid=str(entry["kid"]),
                    key=Ed25519PrivateKey.from_private_bytes(raw),
                    retired=entry.get("retired") is not None,
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
        raise KeyUnusable("keyring file is malformed") from None
    return _State(kek_id=kek_id, keks=keks, current=max(keks), signers=tuple(signers))


def _write(
    path: Path, doc: dict[str, Any], sealer: KeyringSealer | None, *, exclusive: bool
) -> None:
    """Write `doc` (sealed if `sealer`) atomically with mode 0600; if `exclusive`,
    never replace a file."""
    data = sealer.seal(doc) if sealer is not None else json.dumps(doc, indent=2).encode() + b"\n"
    write_atomically(path, data, exclusive=exclusive)
