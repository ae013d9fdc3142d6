"""Suite-2 (16-byte) data keys in the key providers: an SM4-GCM wrap in the keyring, the
token's AES-GCM in PKCS#11 (SoftHSM2 has no SM4)."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.keys.base import KeyUnusable, sm4_kek, wrap_aad
from gateway.keys.keyring import LocalKeyring
from gateway.keys.pkcs11 import Pkcs11Provider
from gateway.suites import SM4GCM
from tests.softhsm import SoftHsmToken

DEK = bytes(range(16))
DEK_ID = b"\x01" * 16


@pytest.fixture
def ring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.open(tmp_path / "keyring.json")


def test_keyring_wraps_a_suite_2_key_with_sm4_gcm(ring: LocalKeyring, tmp_path: Path) -> None:
    wrapped = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert len(wrapped.blob) == 12 + 16 + 16 and DEK not in wrapped.blob
    assert ring.unwrap(wrapped, upload_id="u1", dek_id=DEK_ID) == DEK
    # The wrap is SM4-GCM under the version's SM4 KEK, bound to the same AAD as AES's.
    doc = json.loads((tmp_path / "keyring.json").read_text())
    kek = base64.b64decode(doc["keks"][0]["key"])
    aead = SM4GCM(sm4_kek(kek))
    aad = wrap_aad("u1", DEK_ID, wrapped.kek_version)
    assert aead.decrypt(wrapped.blob[:12], wrapped.blob[12:], aad) == DEK


def test_keyring_binds_a_suite_2_key_like_a_suite_1_key(ring: LocalKeyring) -> None:
    wrapped = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    flipped = bytearray(wrapped.blob)
    flipped[20] ^= 1
    for bad, upload_id, dek_id in [
        (wrapped, "u2", DEK_ID),
        (wrapped, "u1", b"\x02" * 16),
        (replace(wrapped, kek_version=2), "u1", DEK_ID),
        (replace(wrapped, blob=bytes(flipped)), "u1", DEK_ID),
        (replace(wrapped, blob=wrapped.blob[:-1]), "u1", DEK_ID),
    ]:
        with pytest.raises(KeyUnusable):
            ring.unwrap(bad, upload_id=upload_id, dek_id=dek_id)


def test_rotation_rewraps_a_suite_2_key(ring: LocalKeyring) -> None:
    old = ring.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
    assert ring.rotate() == 2
    new = ring.rewrap(old, upload_id="u1", dek_id=DEK_ID)
    assert new.kek_version == 2 and len(new.blob) == 44
    assert ring.unwrap(new, upload_id="u1", dek_id=DEK_ID) == DEK
    assert ring.unwrap(old, upload_id="u1", dek_id=DEK_ID) == DEK


def test_pkcs11_wraps_a_suite_2_key_with_the_tokens_aes(softhsm: SoftHsmToken) -> None:
    prefix = f"t{secrets.token_hex(4)}-"
    keys = Pkcs11Provider(
        softhsm.module,
        softhsm.label,
        softhsm.pin,
        kek_label=f"{prefix}kek",
        signing_label=f"{prefix}signing",
    )
    try:
        keys.init()
        wrapped = keys.wrap(DEK, upload_id="u1", dek_id=DEK_ID)
        assert len(wrapped.blob) == 12 + 16 + 16 and DEK not in wrapped.blob
        assert keys.unwrap(wrapped, upload_id="u1", dek_id=DEK_ID) == DEK
        with pytest.raises(KeyUnusable):
            keys.unwrap(wrapped, upload_id="u2", dek_id=DEK_ID)
        with pytest.raises(ValueError):
            keys.wrap(bytes(24), upload_id="u1", dek_id=DEK_ID)
    finally:
        keys.close()
