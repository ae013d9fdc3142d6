"""SM2 signing keys (KEYS.md, "SM2"): in the keyring beside the Ed25519 ones, sealed with
them, created by init, rotated with rotate-signing (the old one stays published), withdrawn
by retire; the PKCS#11 provider refuses to sign SM2."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from gateway import jws, manifest
from gateway.keycheck import check_suite_keys
from gateway.keys.base import KeyUnusable, SigningState
from gateway.keys.envelope import KeyringProtection
from gateway.keys.keyring import LocalKeyring
from gateway.sealed import Sealer, new_header
from gateway.signer import store_signed
from gateway.sm2 import ALG_SM2
from gateway.store.folder import FolderStore
from tests.softhsm import SoftHsmToken
from tests.test_key_rotation import keys
from tests.test_keys_pkcs11 import _provider
from tests.test_manifest import make


def sm2_states(ring: LocalKeyring) -> dict[str, SigningState]:
    return {k.kid: k.state for k in ring.signing_keys() if k.alg == ALG_SM2}


def suite2_token(ring: LocalKeyring) -> str:
    return manifest.sign_sm2(make(suite=manifest.SUITE_SM), ring.sm2_signing_key())


def published(ring: LocalKeyring) -> dict[str, jws.PublicSigningKey]:
    return {k.kid: k for k in ring.public_sm2_keys()}


def test_a_new_keyring_has_a_current_sm2_key(tmp_path: Path) -> None:
    ring = LocalKeyring.open(tmp_path / "keyring.json")
    key = ring.sm2_signing_key()
    assert key.alg == ALG_SM2 and key.kid.startswith("sm2-")
    assert sm2_states(ring) == {key.kid: SigningState.SIGNING}
    assert [(k.kid, k.current) for k in ring.public_sm2_keys()] == [(key.kid, True)]
    assert manifest.verify_sm2(suite2_token(ring), published(ring))["suite"] == 2
    # Apart from the JWS keys: the JWKS of /.well-known/jwks.json lists no SM2 key.
    assert all(k.alg != ALG_SM2 for k in ring.public_signing_keys())
    assert any(c.endswith(f"({ALG_SM2})") for c in ring.init()), "init reports the SM2 key"


def test_the_sm2_private_key_is_sealed_with_the_others(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    protection = KeyringProtection.from_file(bytes(range(100, 132)))
    ring = LocalKeyring.open(path, protection=protection)
    private = ring.sm2_signing_key().private
    raw = path.read_bytes()
    assert base64.b64encode(private) not in raw and private not in raw
    assert b"sm2-" not in raw  # not even its kid: the whole document is sealed
    again = LocalKeyring.open(path, protection=protection)
    assert again.sm2_signing_key().private == private
    with pytest.raises(KeyUnusable):
        LocalKeyring.open(path)  # no KEK, no keys


def test_an_older_keyring_gets_an_sm2_key_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    doc = json.loads(path.read_text())
    ed_kids = [e["kid"] for e in doc["signing_keys"]]
    del doc["sm2_signing_keys"]
    path.write_text(json.dumps(doc))
    ring = LocalKeyring.open(path)
    assert ring.sm2_signing_key().kid.startswith("sm2-")
    assert ring.signing_key().kid == ed_kids[0]  # the Ed25519 keys untouched


def test_rotate_signing_rotates_the_sm2_key_and_keeps_the_old_one_published(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    other = LocalKeyring.open(path)  # another process's view of the same file
    old = ring.sm2_signing_key().kid
    token = suite2_token(ring)
    ring.rotate_signing()
    new = ring.sm2_signing_key().kid
    assert new != old
    assert sm2_states(ring) == {old: SigningState.PUBLISHED, new: SigningState.SIGNING}
    keys = published(ring)
    assert set(keys) == {old, new} and keys[new].current and not keys[old].current
    assert manifest.verify_sm2(token, keys)["suite"] == 2  # what the old key signed
    other.refresh()
    assert other.sm2_signing_key().kid == new


def test_retire_withdraws_an_sm2_key_and_destroys_its_private_half(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    old = ring.sm2_signing_key()
    token = suite2_token(ring)
    with pytest.raises(KeyUnusable, match="current"):
        ring.retire_signing(old.kid)
    ring.rotate_signing()
    ring.retire_signing(old.kid)
    assert sm2_states(ring)[old.kid] is SigningState.RETIRED
    assert old.kid not in published(ring)
    with pytest.raises(manifest.ManifestError, match="unknown kid"):
        manifest.verify_sm2(token, published(ring))
    entry = next(e for e in json.loads(path.read_text())["sm2_signing_keys"] if e["kid"] == old.kid)
    assert "private" not in entry and entry["state"] == "retired"
    assert base64.b64encode(old.private) not in path.read_bytes()
    assert sm2_states(LocalKeyring.open(path))[old.kid] is SigningState.RETIRED


def test_a_malformed_sm2_entry_makes_the_keyring_unusable(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    doc = json.loads(path.read_text())
    public = bytearray(base64.b64decode(doc["sm2_signing_keys"][0]["public"]))
    public[-1] ^= 1  # off the curve
    doc["sm2_signing_keys"][0]["public"] = base64.b64encode(bytes(public)).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyUnusable, match="malformed"):
        LocalKeyring.open(path)


def test_the_pkcs11_provider_refuses_to_sign_sm2(softhsm: SoftHsmToken) -> None:
    """No PKCS#11 mechanism signs SM2 (SoftHSM2 has none): suite 2 is refused with a
    message saying what to use instead, and no SM2 key is published."""
    provider = _provider(softhsm, "sm2-")
    try:
        provider.init()
        with pytest.raises(KeyUnusable, match=r"cannot sign SM2.*keyring"):
            provider.sm2_signing_key()
        assert provider.public_sm2_keys() == []
        assert all(k.alg != ALG_SM2 for k in provider.signing_keys())
        # A gateway that seals with suite 2 refuses to start with it; with AES it starts.
        with pytest.raises(KeyUnusable, match="cannot sign SM2"):
            check_suite_keys(provider, "sm")
        check_suite_keys(provider, "aes")
    finally:
        provider.close()


def test_a_keyring_can_sign_suite_2(tmp_path: Path) -> None:
    check_suite_keys(LocalKeyring.open(tmp_path / "keyring.json"), "sm")


def test_the_keys_commands_show_rotate_and_retire_sm2_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert keys(data, "init").code == 0
    before = sm2_rows(keys(data, "list").stdout)
    assert list(before.values()) == ["signing"]
    rotated = keys(data, "rotate-signing")
    assert rotated.code == 0, str(rotated)
    after = sm2_rows(keys(data, "list").stdout)
    (old,) = before
    (new,) = set(after) - {old}
    assert after == {old: "published", new: "signing"}
    assert f"SM2 signing key {new} is current" in rotated.stdout
    assert rotated.stdout.splitlines()[-1].startswith("ed25519-")  # the last line: as before
    assert keys(data, "retire", old).code == 0
    assert sm2_rows(keys(data, "list").stdout) == {old: "retired", new: "signing"}


def sm2_rows(listing: str) -> dict[str, str]:
    return dict(re.findall(r"^  (sm2-[0-9a-f]+) +SM2-SM3 +(\w+)", listing, re.MULTILINE))


def test_a_suite_2_manifest_without_an_sm2_key_is_not_written(
    softhsm: SoftHsmToken, tmp_path: Path
) -> None:
    """The completion path's signer with the PKCS#11 provider: nothing is stored, so the
    upload does not complete with half its proof."""
    store = FolderStore(tmp_path / "objects")
    dek = bytes(range(32))
    header = new_header(
        dek, upload_id="u2", dek_id=bytes(16), segment_size=65536, plaintext_size=200_000
    )
    ring = LocalKeyring.open(tmp_path / "keyring.json")
    document = make(suite=manifest.SUITE_SM, signer_kid=ring.signing_key().kid)
    provider = _provider(softhsm, "sm2c-")
    try:
        provider.init()
        for sm2_signing in (provider.sm2_signing_key, None):
            with pytest.raises((KeyUnusable, ValueError)):
                store_signed(
                    store=store,
                    upload_id="u2",
                    document=document,
                    sealer=Sealer(dek, header),
                    signing=ring.signing_key(),
                    sm2_signing=sm2_signing,
                )
            assert not (tmp_path / "objects").exists() or not any(
                (tmp_path / "objects").rglob("manifest*")
            )
    finally:
        provider.close()
