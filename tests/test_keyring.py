"""Tests for the local keyring: wrapping, binding, file mode, rotation, signing keys."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.keys.base import KeyProvider, KeyUnusable
from gateway.keys.keyring import LocalKeyring

DEK = bytes(range(32))
DEK_ID = b"\x01" * 16


@pytest.fixture
def ring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.open(tmp_path / "keys" / "keyring.json")


def test_round_trip(ring: LocalKeyring) -> None:
    provider: KeyProvider = ring
    w = provider.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert w.kek_id == ring.kek_id and ring.kek_id.startswith("local-")
    assert w.kek_version == 1 and len(w.blob) == 12 + 32 + 16
    assert DEK not in w.blob
    assert provider.unwrap(w, upload_id="u1", dek_id=DEK_ID) == DEK
    assert provider.wrap(DEK, upload_id="u1", dek_id=DEK_ID).blob != w.blob  # fresh nonce
    provider.check()


def test_wrap_rejects_bad_dek(ring: LocalKeyring) -> None:
    with pytest.raises(ValueError):
        ring.wrap(DEK[:24], upload_id="u1", dek_id=DEK_ID)


def test_unwrap_mismatches_fail(ring: LocalKeyring) -> None:
    w = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    flipped = bytearray(w.blob)
    flipped[20] ^= 0x01
    cases = [
        (w, "u2", DEK_ID),
        (w, "u1", b"\x02" * 16),
        (replace(w, kek_version=2), "u1", DEK_ID),
        (replace(w, kek_id="local-other"), "u1", DEK_ID),
        (replace(w, blob=bytes(flipped)), "u1", DEK_ID),
        (replace(w, blob=w.blob[:-1]), "u1", DEK_ID),
        (w, "u" * 300, DEK_ID),
    ]
    for wrapped, upload_id, dek_id in cases:
        with pytest.raises(KeyUnusable):
            ring.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id)
    ring.rotate()
    with pytest.raises(KeyUnusable):  # a real version, but not the one it was wrapped under
        ring.unwrap(replace(w, kek_version=2), upload_id="u1", dek_id=DEK_ID)


def test_file_mode_and_format(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["kek_id"] == ring.kek_id
    assert len(base64.b64decode(doc["keks"][0]["key"])) == 32
    ring.rotate()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temp files left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_keyring_others_may_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    path.chmod(mode)
    with pytest.raises(KeyUnusable, match=f"chmod 600 {path}$") as info:
        LocalKeyring.open(path)
    assert str(path) in str(info.value)
    path.chmod(0o600)
    LocalKeyring.open(path)


def test_reopen_loads_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    r1 = LocalKeyring.open(path)
    w = r1.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    r2 = LocalKeyring.open(path)
    assert r2.kek_id == r1.kek_id
    assert r2.unwrap(w, upload_id="u1", dek_id=DEK_ID) == DEK


def test_rotate_and_rewrap(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    old = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert ring.rotate() == 2
    assert ring.unwrap(old, upload_id="u1", dek_id=DEK_ID) == DEK
    assert ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID).kek_version == 2
    new = ring.rewrap(old, upload_id="u1", dek_id=DEK_ID)
    assert (new.kek_id, new.kek_version) == (old.kek_id, 2)
    assert ring.unwrap(new, upload_id="u1", dek_id=DEK_ID) == DEK
    with pytest.raises(KeyUnusable):
        ring.rewrap(old, upload_id="u2", dek_id=DEK_ID)

    reopened = LocalKeyring.open(path)
    assert reopened.current_version == 2
    assert reopened.unwrap(old, upload_id="u1", dek_id=DEK_ID) == DEK


def test_rotation_by_another_process_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    r1 = LocalKeyring.open(path)
    r2 = LocalKeyring.open(path)
    assert r2.rotate() == 2
    w = r2.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert r1.unwrap(w, upload_id="u1", dek_id=DEK_ID) == DEK
    assert r1.rotate() == 3  # re-reads the file: version 2 is not lost


def test_signing_key_stable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    r1 = LocalKeyring.open(path)
    key = r1.signing_key()
    sig = key.sign(b"manifest")
    r2 = LocalKeyring.open(path)
    key2 = r2.signing_key()
    assert key2.kid == key.kid
    raw = PublicFormat.Raw
    assert key2.private.public_key().public_bytes(
        Encoding.Raw, raw
    ) == key.private.public_key().public_bytes(Encoding.Raw, raw)
    pubs = r2.public_signing_keys()
    assert [(k.kid, k.current) for k in pubs] == [(key.kid, True)]
    assert isinstance(pubs[0].key, Ed25519PublicKey)
    pubs[0].key.verify(sig, b"manifest")


def test_signing_key_added_to_older_file(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    doc = json.loads(path.read_text())
    del doc["signing_keys"]
    path.write_text(json.dumps(doc))
    kid = LocalKeyring.open(path).signing_key().kid
    assert json.loads(path.read_text())["signing_keys"][0]["kid"] == kid


def test_malformed_file_raises_key_error(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("{not json")
    with pytest.raises(KeyUnusable):
        LocalKeyring.open(path)
    path.write_text(
        json.dumps({"format": 1, "kek_id": "x", "keks": [{"version": 1, "key": "AA=="}]})
    )
    with pytest.raises(KeyUnusable):
        LocalKeyring.open(path)


def test_repr_hides_key_material(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    ring.rotate()
    text = repr(ring) + str(ring)
    doc = json.loads(path.read_text())
    material = [k["key"] for k in doc["keks"]] + [k["private"] for k in doc["signing_keys"]]
    for b64 in material:
        raw = base64.b64decode(b64)
        assert b64 not in text and raw.hex() not in text and repr(raw) not in text
    assert ring.kek_id in text
