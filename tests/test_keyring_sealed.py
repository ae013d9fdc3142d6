"""The keyring sealed under a key-encryption key: round trips, wrong keys, migration."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from gateway.keys.base import KeyUnusable
from gateway.keys.envelope import SEALED_FORMAT, KeyringProtection
from gateway.keys.keyring import UNPROTECTED, LocalKeyring

DEK = bytes(range(32))
DEK_ID = b"\x02" * 16
RAW = KeyringProtection.from_file(bytes(range(100, 132)))
PASSPHRASE = KeyringProtection.from_file(b"correct horse battery staple\n")


def _secrets_in(doc: dict[str, object]) -> list[bytes]:
    """The raw KEK bytes and signing-key private bytes of a plain keyring document."""
    keks = [base64.b64decode(k["key"]) for k in doc["keks"]]  # type: ignore[attr-defined]
    signers = [base64.b64decode(s["private"]) for s in doc["signing_keys"]]  # type: ignore[attr-defined]
    return keks + signers


def _plain_doc(ring: LocalKeyring, path: Path, protection: KeyringProtection) -> dict[str, object]:
    """The document inside a sealed file (opened through the module, not by hand)."""
    from gateway.keys.envelope import open_envelope

    doc, _ = open_envelope(json.loads(path.read_bytes()), protection, path.name)
    return doc


@pytest.mark.parametrize("protection", [RAW, PASSPHRASE], ids=["raw-key", "passphrase"])
def test_sealed_round_trip(tmp_path: Path, protection: KeyringProtection) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path, protection=protection)
    assert ring.sealed and ring.warnings() == []
    wrapped = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    envelope = json.loads(path.read_bytes())
    assert envelope["format"] == SEALED_FORMAT and envelope["version"] == 1
    assert envelope["kdf"]["name"] == ("raw" if protection.is_raw_key else "scrypt")
    if not protection.is_raw_key:
        assert envelope["kdf"]["n"] >= 2**15 and envelope["kdf"]["r"] >= 8
    assert set(envelope) == {"format", "version", "kdf", "nonce", "ciphertext"}
    again = LocalKeyring.open(path, protection=protection)
    assert again.unwrap(wrapped, upload_id="u1", dek_id=DEK_ID) == DEK
    assert again.signing_key().kid == ring.signing_key().kid


def test_the_envelope_holds_no_key_in_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path, protection=RAW)
    raw = path.read_bytes()
    for secret in _secrets_in(_plain_doc(ring, path, RAW)):
        assert secret not in raw and base64.b64encode(secret) not in raw
    assert b"kek_id" not in raw and b"signing_keys" not in raw


def test_a_sealed_keyring_without_its_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path, protection=PASSPHRASE)
    with pytest.raises(KeyUnusable, match="encrypted; set GATEWAY_KEK_FILE"):
        LocalKeyring.open(path)


@pytest.mark.parametrize(
    ("sealed_with", "opened_with"),
    [
        (RAW, KeyringProtection.from_file(os.urandom(32))),
        (PASSPHRASE, KeyringProtection.from_file(b"wrong passphrase")),
        (RAW, PASSPHRASE),
        (PASSPHRASE, RAW),
    ],
)
def test_the_wrong_key_is_a_clear_error(
    tmp_path: Path, sealed_with: KeyringProtection, opened_with: KeyringProtection
) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path, protection=sealed_with)
    with pytest.raises(KeyUnusable, match="GATEWAY_KEK_FILE") as info:
        LocalKeyring.open(path, protection=opened_with)
    assert info.value.__cause__ is None  # nothing chained that could show key material
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert opened_with.secret.decode("latin-1") not in str(info.value)


def test_a_plain_keyring_is_sealed_in_place_on_first_open_with_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    plain = LocalKeyring.open(path)
    assert plain.warnings() == [UNPROTECTED]
    secrets = _secrets_in(json.loads(path.read_bytes()))
    wrapped = plain.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    sealed = LocalKeyring.open(path, protection=PASSPHRASE)
    raw = path.read_bytes()
    assert json.loads(raw)["format"] == SEALED_FORMAT
    assert not any(s in raw or base64.b64encode(s) in raw for s in secrets)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sealed.kek_id == plain.kek_id
    assert sealed.unwrap(wrapped, upload_id="u1", dek_id=DEK_ID) == DEK
    with pytest.raises(KeyUnusable, match="GATEWAY_KEK_FILE"):
        LocalKeyring.open(path)


def test_rotation_keeps_the_keyring_sealed_with_a_fresh_nonce(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path, protection=PASSPHRASE)
    before = json.loads(path.read_bytes())
    assert ring.rotate() == 2
    after = json.loads(path.read_bytes())
    assert after["format"] == SEALED_FORMAT and after["nonce"] != before["nonce"]
    assert after["kdf"] == before["kdf"]  # same salt: the passphrase still opens it
    reopened = LocalKeyring.open(path, protection=PASSPHRASE)
    assert reopened.current_version == 2
    wrapped = reopened.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert ring.unwrap(wrapped, upload_id="u1", dek_id=DEK_ID) == DEK


def test_the_protection_never_prints_its_secret() -> None:
    assert b"correct horse" not in repr(PASSPHRASE).encode()
    assert "correct horse" not in repr(PASSPHRASE)
