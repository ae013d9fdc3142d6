"""The local keyring: versioned KEKs and manifest-signing keys in one 0600 JSON file."""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import secrets
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gateway import sm2
from gateway.config import Settings
from gateway.files import write_atomically
from gateway.jws import ALG_ED25519, Ed25519SigningKey, PublicSigningKey
from gateway.keys.base import (
    DEK_LENGTHS,
    KekVersion,
    KeyUnusable,
    SigningKeyInfo,
    SigningState,
    WrappedKey,
    sm4_kek,
    wrap_aad,
)
from gateway.keys.envelope import KeyringProtection, KeyringSealer, is_sealed, open_envelope
from gateway.suites import SM4GCM

_FORMAT = 1
_KEY_LEN = 32
_SM4_KEY_LEN = 16
_NONCE_LEN = 12
_TAG_LEN = 16
_ALG = ALG_ED25519
_SM2_LIST = "sm2_signing_keys"
# How often a running keyring looks (one stat) whether another process changed the file.
_STAT_INTERVAL = 1.0
UNPROTECTED = "keys: the keyring is not encrypted (set GATEWAY_KEK_FILE)"
log = logging.getLogger("gateway.keys")

# The file's identity and version: replaced atomically, so a change shows as a new inode.
_Stamp = tuple[int, int, int, int]


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class _Signer:
    kid: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None  # None once retired: the private bytes are gone
    state: SigningState
    created: str | None


@dataclass(frozen=True, repr=False)  # repr=False: never print key material
class _Sm2Signer:
    kid: str
    public: sm2.Sm2PublicKey
    private: bytes | None  # None once retired
    state: SigningState
    created: str | None


@dataclass(frozen=True, repr=False)
class _State:
    """An immutable snapshot of the keyring; swapped whole so readers need no lock."""

    kek_id: str
    keks: dict[int, AESGCM]
    sm4_keks: dict[int, SM4GCM]  # wrap suite-2 (16-byte) data keys, one per version
    kek_created: dict[int, str | None]
    current: int
    signers: tuple[_Signer, ...]
    # SM2 keys (suite-2 manifests), a list of their own: "signing_keys" stays Ed25519 only,
    # as versions before SM2 read it.
    sm2_signers: tuple[_Sm2Signer, ...] = ()


class LocalKeyring:
    """A `KeyProvider` and `KeyAdmin` whose keys live in a local file (for one node or
    for tests). Changes by other processes (`gateway keys ...`) are seen within a
    second: the file is stat-ed at most once a second before wrapping or signing.
    Writers (this one and others) take an flock on the keyring's folder and re-read
    the file under it, so concurrent changes are never lost."""

    def __init__(
        self,
        path: Path,
        state: _State,
        protection: KeyringProtection | None = None,
        *,
        stamp: _Stamp | None = None,
        sealer: KeyringSealer | None = None,
        created: list[str] | None = None,
    ) -> None:
        self._path = path
        self._state = state
        self._protection = protection
        self._lock = threading.Lock()  # serialises this process's writes and reloads
        self._stamp = stamp
        self._sealer = sealer  # the last one read: a reload needs no scrypt
        self._checked = time.monotonic()
        self._created = list(created or ())

    @classmethod
    def open(cls, path: Path, *, protection: KeyringProtection | None = None) -> LocalKeyring:
        """Load the keyring at `path`, creating it (one KEK, one signing key) if absent.

        With `protection` the file is a sealed envelope: a plain keyring is sealed in
        place the first time; without it, a sealed keyring is refused."""
        path = Path(path)
        created: list[str] = []
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # If another process created it meanwhile, its file wins and is loaded below.
            sealer = KeyringSealer.new(protection) if protection is not None else None
            fresh = _new_document()
            _write(path, fresh, sealer, exclusive=True)
            created = [
                f"keyring {path}",
                f"KEK {fresh['kek_id']} version 1",
                f"signing key {fresh['signing_keys'][0]['kid']} ({_ALG})",
                f"signing key {fresh[_SM2_LIST][0]['kid']} ({sm2.ALG_SM2})",
            ]
        _check_owner_only(path)
        doc, sealer, was_sealed = _load(path, protection)
        if created and created[1] != f"KEK {doc.get('kek_id')} version 1":
            created = []  # another process's file won
        if (
            not doc.get("signing_keys")
            or _SM2_LIST not in doc
            or (sealer is not None and not was_sealed)
        ):
            # Files written before signing keys (or SM2 keys) existed get one on first
            # use; a plain keyring opened with a KEK is sealed in place.
            with _exclusive(path):
                doc, sealer, was_sealed = _load(path, protection, sealer)
                needs_write = sealer is not None and not was_sealed
                if not doc.get("signing_keys"):
                    entry = _new_signing_entry()
                    doc["signing_keys"] = [entry]
                    created.append(f"signing key {entry['kid']} ({_ALG})")
                    needs_write = True
                if _SM2_LIST not in doc:
                    entry = _new_sm2_entry()
                    doc[_SM2_LIST] = [entry]
                    created.append(f"signing key {entry['kid']} ({sm2.ALG_SM2})")
                    needs_write = True
                if needs_write:
                    _write(path, doc, sealer, exclusive=False)
        stamp = _stamp(path)  # before the read that the state comes from
        doc, sealer, _ = _load(path, protection, sealer)
        return cls(path, _parse(doc), protection, stamp=stamp, sealer=sealer, created=created)

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
        return self._fresh().current

    def wrap(self, dek: bytes, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        if len(dek) not in DEK_LENGTHS:
            raise ValueError("a DEK must be 32 bytes (suite 1) or 16 bytes (suite 2)")
        st = self._fresh()
        nonce = os.urandom(_NONCE_LEN)
        aad = wrap_aad(upload_id, dek_id, st.current)
        # A suite-2 key under the version's SM4 KEK, with the same binding as AES's.
        aead = st.keks[st.current] if len(dek) == _KEY_LEN else st.sm4_keks[st.current]
        blob = nonce + aead.encrypt(nonce, bytes(dek), aad)
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
        if wrapped.kek_version not in st.keks:
            raise KeyUnusable(f"unknown KEK version {wrapped.kek_version}")
        blob = bytes(wrapped.blob)
        # The blob's length says which KEK wrapped it: AES for 32-byte keys, SM4 for 16.
        aead: AESGCM | SM4GCM
        if len(blob) == _NONCE_LEN + _KEY_LEN + _TAG_LEN:
            aead = st.keks[wrapped.kek_version]
        elif len(blob) == _NONCE_LEN + _SM4_KEY_LEN + _TAG_LEN:
            aead = st.sm4_keks[wrapped.kek_version]
        else:
            raise KeyUnusable("wrapped key has the wrong length")
        try:
            aad = wrap_aad(upload_id, dek_id, wrapped.kek_version)
            return aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], aad)
        except (InvalidTag, ValueError, struct.error):
            raise KeyUnusable("wrapped key does not verify for this upload and DEK id") from None

    def rewrap(self, wrapped: WrappedKey, *, upload_id: str, dek_id: bytes) -> WrappedKey:
        dek = self.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)
        return self.wrap(dek, upload_id=upload_id, dek_id=dek_id)

    def check(self) -> None:
        st = self._fresh()
        try:
            probe = self.wrap(bytes(_KEY_LEN), upload_id="check", dek_id=b"check")
            ok = self.unwrap(probe, upload_id="check", dek_id=b"check") == bytes(_KEY_LEN)
        except Exception as e:
            raise KeyUnusable(f"KEK {st.kek_id!r} v{st.current} is not usable") from e
        if not ok:
            raise KeyUnusable(f"KEK {st.kek_id!r} v{st.current} is not usable")

    # manifest signing

    def signing_key(self) -> Ed25519SigningKey:
        """The current signing key."""
        for s in self._fresh().signers:
            if s.state is SigningState.SIGNING and s.private is not None:
                return Ed25519SigningKey(s.kid, s.private)
        raise KeyUnusable("the keyring has no current signing key (run: gateway keys init)")

    def public_signing_keys(self) -> list[PublicSigningKey]:
        """The public half of the current key and of every published one (for the JWKS)."""
        return [
            PublicSigningKey(s.kid, _ALG, s.public, current=s.state is SigningState.SIGNING)
            for s in self._fresh().signers
            if s.state is not SigningState.RETIRED
        ]

    def sm2_signing_key(self) -> sm2.Sm2SigningKey:
        """The current SM2 signing key (suite-2 manifests)."""
        for s in self._fresh().sm2_signers:
            if s.state is SigningState.SIGNING and s.private is not None:
                return sm2.Sm2SigningKey(s.kid, s.private, s.public)
        raise KeyUnusable("the keyring has no current SM2 signing key (run: gateway keys init)")

    def public_sm2_keys(self) -> list[PublicSigningKey]:
        """The current and published SM2 keys (MANIFEST.md, "SM2")."""
        return [
            PublicSigningKey(s.kid, sm2.ALG_SM2, s.public, current=s.state is SigningState.SIGNING)
            for s in self._fresh().sm2_signers
            if s.state is not SigningState.RETIRED
        ]

    # administration (KeyAdmin)

    def init(self) -> list[str]:
        """What opening created (the file and its keys) and a signing key if none is current."""
        created, self._created = self._created, []

        def change(doc: dict[str, Any]) -> list[str]:
            done = []
            for name, new in (("signing_keys", _new_signing_entry), (_SM2_LIST, _new_sm2_entry)):
                entries = doc.setdefault(name, [])
                if not any(e["state"] == SigningState.SIGNING for e in entries):
                    entry = new()
                    entries.append(entry)
                    done.append(f"signing key {entry['kid']} ({entry['alg']})")
            return done

        return created + self._modify(change)

    def kek_versions(self) -> list[KekVersion]:
        st = self._fresh()
        return [
            KekVersion(version=v, created=st.kek_created.get(v), current=v == st.current)
            for v in sorted(st.keks)
        ]

    def rotate(self) -> int:
        """Add a new KEK version, make it current and persist it; returns the version."""

        def change(doc: dict[str, Any]) -> list[str]:
            version = max(int(e["version"]) for e in doc["keks"]) + 1
            doc["keks"].append(_new_kek_entry(version))
            return [str(version)]

        return int(self._modify(change)[0])

    def signing_keys(self) -> list[SigningKeyInfo]:
        st = self._fresh()
        return [
            SigningKeyInfo(kid=s.kid, alg=_ALG, state=s.state, created=s.created)
            for s in st.signers
        ] + [
            SigningKeyInfo(kid=s.kid, alg=sm2.ALG_SM2, state=s.state, created=s.created)
            for s in st.sm2_signers
        ]

    def rotate_signing(self) -> str:
        """A new current signing key, and a new SM2 one; those they replace stay published.
        Returns the Ed25519 key's kid."""

        def change(doc: dict[str, Any]) -> list[str]:
            now = _now()
            kids = []
            for name, new in (("signing_keys", _new_signing_entry), (_SM2_LIST, _new_sm2_entry)):
                for e in doc.setdefault(name, []):
                    if e["state"] == SigningState.SIGNING:
                        e["state"], e["retired"] = SigningState.PUBLISHED.value, now
                entry = new()
                doc[name].append(entry)
                kids.append(entry["kid"])
            return kids

        return self._modify(change)[0]

    def retire_signing(self, kid: str) -> None:
        """Destroy a published key's private bytes and withdraw it from the JWKS; its
        public half stays in the file, so `keys list` still shows it (retired)."""

        def change(doc: dict[str, Any]) -> list[str]:
            entries = [*doc["signing_keys"], *doc.get(_SM2_LIST, [])]
            entry = next((e for e in entries if e["kid"] == kid), None)
            if entry is None:
                raise KeyUnusable(f"no signing key {kid!r} in the keyring")
            if entry["state"] == SigningState.SIGNING:
                raise KeyUnusable(
                    f"signing key {kid!r} is the current one; run rotate-signing first"
                )
            if entry["state"] == SigningState.RETIRED:
                return []
            entry["state"], entry["withdrawn"] = SigningState.RETIRED.value, _now()
            entry.pop("private", None)
            return ["retired"]

        self._modify(change)

    def refresh(self) -> None:
        self._reload()

    # reading and writing the file

    def _fresh(self) -> _State:
        """The state, re-read first if another process changed the file (one stat a second)."""
        now = time.monotonic()
        if now - self._checked >= _STAT_INTERVAL:
            self._checked = now
            try:
                changed = _stamp(self._path) != self._stamp
            except OSError:
                changed = False  # gone or unreadable: keep the keys in memory
            if changed:
                try:
                    return self._reload()
                except KeyUnusable as exc:
                    log.warning("keyring changed but cannot be read again: %s", exc)
        return self._state

    def _reload(self) -> _State:
        with self._lock:
            stamp = _stamp(self._path)  # before reading: a later change is seen next time
            doc, self._sealer, _ = _load(self._path, self._protection, self._sealer)
            self._state, self._stamp = _parse(doc), stamp
            return self._state

    def _modify(self, change: Callable[[dict[str, Any]], list[str]]) -> list[str]:
        """Re-read the file under the cross-process lock, apply `change` (which returns
        what it did; nothing means nothing to write), write atomically."""
        with self._lock, _exclusive(self._path):
            doc, sealer, _ = _load(self._path, self._protection, self._sealer)
            self._sealer = sealer
            _normalise(doc)
            done = change(doc)
            if done:
                state = _parse(doc)
                _write(self._path, doc, sealer, exclusive=False)
            else:
                state = _parse(doc)
            self._state, self._stamp = state, _stamp(self._path)
            return done


def open_configured(settings: Settings) -> LocalKeyring:
    """The keyring at settings.keyring_path, sealed under GATEWAY_KEK_FILE if set."""
    secret = settings.kek_secret()
    protection = KeyringProtection.from_file(secret) if secret is not None else None
    return LocalKeyring.open(settings.keyring_path, protection=protection)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _new_kek_entry(version: int) -> dict[str, Any]:
    return {"version": version, "key": _b64(os.urandom(_KEY_LEN)), "created": _now()}


def _new_signing_entry() -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {
        "kid": "ed25519-" + secrets.token_hex(4),
        "alg": _ALG,
        "state": SigningState.SIGNING.value,
        "private": _b64(private),
        "public": _b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
        "created": _now(),
        # Kept for older versions: non-null means "signs nothing new" (published).
        "retired": None,
    }


def _new_sm2_entry() -> dict[str, Any]:
    private, public = sm2.generate()
    return {
        "kid": "sm2-" + secrets.token_hex(4),
        "alg": sm2.ALG_SM2,
        "state": SigningState.SIGNING.value,
        "private": _b64(private),
        "public": _b64(public),
        "created": _now(),
    }


def _new_document() -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "kek_id": "local-" + secrets.token_hex(4),
        "keks": [_new_kek_entry(1)],
        "signing_keys": [_new_signing_entry()],
        _SM2_LIST: [_new_sm2_entry()],
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
    path: Path, protection: KeyringProtection | None, known: KeyringSealer | None = None
) -> tuple[dict[str, Any], KeyringSealer | None, bool]:
    """The keyring document, the sealer to write it back with (None: plain), and
    whether the file was sealed. `known`: the sealer of an earlier read, reused."""
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise KeyUnusable(f"cannot read keyring {path.name}: {e.strerror}") from None
    except ValueError:
        raise KeyUnusable(f"keyring {path.name} is not valid JSON") from None
    sealer = None
    was_sealed = is_sealed(doc)
    if was_sealed:
        doc, sealer = open_envelope(doc, protection, path.name, known)
    elif protection is not None:
        sealer = known if known is not None else KeyringSealer.new(protection)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise KeyUnusable(f"keyring {path.name} has an unknown format")
    return doc, sealer, was_sealed


def _stamp(path: Path) -> _Stamp:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Exclusive use of the keyring against other processes (and other instances in
    this one): an flock on the folder holding it, the one thing the atomic replace of
    the file leaves in place; released on exit, or when the process dies."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _signing_states(entries: list[dict[str, Any]]) -> list[SigningState]:
    """Each entry's state. Entries written before states existed have a "retired"
    timestamp (published) or null; of those, the newest null one signs."""
    states: list[SigningState | None] = [
        SigningState(e["state"]) if e.get("state") is not None else None for e in entries
    ]
    if states.count(SigningState.SIGNING) > 1:
        raise ValueError
    if SigningState.SIGNING not in states:
        legacy = [
            i for i, e in enumerate(entries) if states[i] is None and e.get("retired") is None
        ]
        if legacy:
            states[legacy[-1]] = SigningState.SIGNING
    return [SigningState.PUBLISHED if s is None else s for s in states]


def _normalise(doc: dict[str, Any]) -> None:
    """Give every signing entry an explicit state and public key, in place (before a
    write); a retired entry keeps no private key."""
    entries = doc.setdefault("signing_keys", [])
    try:
        states = _signing_states(entries)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise KeyUnusable("keyring file is malformed") from None
    for entry, signer, state in zip(entries, _parse(doc).signers, states, strict=True):
        entry["state"] = state.value
        entry.setdefault("alg", _ALG)
        entry["public"] = _b64(signer.public.public_bytes(Encoding.Raw, PublicFormat.Raw))
        if state is SigningState.RETIRED:
            entry.pop("private", None)
    for entry in doc.get(_SM2_LIST, []):
        if entry.get("state") == SigningState.RETIRED:
            entry.pop("private", None)


def _parse(doc: dict[str, Any]) -> _State:
    # Errors name no values: they could be key material.
    try:
        kek_id = doc["kek_id"]
        if not isinstance(kek_id, str) or not kek_id:
            raise ValueError
        keks: dict[int, AESGCM] = {}
        sm4_keks: dict[int, SM4GCM] = {}
        created: dict[int, str | None] = {}
        for entry in doc["keks"]:
            version = entry["version"]
            key = base64.b64decode(entry["key"], validate=True)
            if type(version) is not int or not 0 < version <= 0xFFFFFFFF or version in keks:
                raise ValueError
            if len(key) != _KEY_LEN:
                raise ValueError
            keks[version] = AESGCM(key)
            sm4_keks[version] = SM4GCM(sm4_kek(key))
            created[version] = entry.get("created")
        if not keks:
            raise ValueError
        entries = list(doc.get("signing_keys") or ())
        signers = []
        kids = set()
        for entry, state in zip(entries, _signing_states(entries), strict=True):
            kid = entry["kid"]
            if not isinstance(kid, str) or not kid or kid in kids:
                raise ValueError
            kids.add(kid)
            if entry.get("alg", _ALG) != _ALG:
                raise ValueError
            private = None
            if state is not SigningState.RETIRED:
                raw = base64.b64decode(entry["private"], validate=True)
                private = Ed25519PrivateKey.from_private_bytes(raw)
                public = private.public_key()
            else:
                raw = base64.b64decode(entry["public"], validate=True)
                public = Ed25519PublicKey.from_public_bytes(raw)
            signers.append(_Signer(kid, public, private, state, entry.get("created")))
        sm2_signers = _parse_sm2(doc.get(_SM2_LIST) or [], kids)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, sm2.Sm2Error):
        raise KeyUnusable("keyring file is malformed") from None
    return _State(
        kek_id=kek_id,
        keks=keks,
        sm4_keks=sm4_keks,
        kek_created=created,
        current=max(keks),
        signers=tuple(signers),
        sm2_signers=sm2_signers,
    )


def _parse_sm2(entries: list[dict[str, Any]], kids: set[str]) -> tuple[_Sm2Signer, ...]:
    """The SM2 keys; each entry has an explicit state (they were born with states).
    ValueError (or Sm2Error) on anything malformed; the caller names no values."""
    signers = []
    states = [SigningState(e["state"]) for e in entries]
    if states.count(SigningState.SIGNING) > 1:
        raise ValueError
    for entry, state in zip(entries, states, strict=True):
        kid = entry["kid"]
        if not isinstance(kid, str) or not kid or kid in kids or entry["alg"] != sm2.ALG_SM2:
            raise ValueError
        kids.add(kid)
        public = sm2.Sm2PublicKey(base64.b64decode(entry["public"], validate=True))
        private = None
        if state is not SigningState.RETIRED:
            private = base64.b64decode(entry["private"], validate=True)
            sm2.Sm2SigningKey(kid, private, public)  # checks the scalar's range
        signers.append(_Sm2Signer(kid, public, private, state, entry.get("created")))
    return tuple(signers)


def _write(
    path: Path, doc: dict[str, Any], sealer: KeyringSealer | None, *, exclusive: bool
) -> None:
    """Write `doc` (sealed if `sealer`) atomically with mode 0600; if `exclusive`,
    never replace a file."""
    data = sealer.seal(doc) if sealer is not None else json.dumps(doc, indent=2).encode() + b"\n"
    write_atomically(path, data, exclusive=exclusive)
