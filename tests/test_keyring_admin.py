"""The local keyring administered (`KeyAdmin`): KEK versions, signing keys rotated and
retired, changes seen by another instance on the same file, old files, racing writers."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from gateway import jws
from gateway.keys.base import AdministeredProvider, KeyUnusable, SigningState
from gateway.keys.envelope import KeyringProtection
from gateway.keys.keyring import LocalKeyring
from gateway.sm2 import ALG_SM2

DEK = bytes(range(32))
DEK_ID = b"\x07" * 16


def states(ring: LocalKeyring) -> dict[str, SigningState]:
    """The Ed25519 keys' states (the SM2 keys beside them: tests/test_sm2_keys.py)."""
    return {k.kid: k.state for k in ring.signing_keys() if k.alg == jws.ALG_ED25519}


def test_a_fresh_keyring_reports_what_init_created(tmp_path: Path) -> None:
    ring = LocalKeyring.open(tmp_path / "keyring.json")
    admin: AdministeredProvider = ring
    created = admin.init()
    assert any(c.startswith("keyring ") for c in created), created
    assert any(c.startswith("KEK ") for c in created), created
    assert any(c.startswith("signing key ") for c in created), created
    assert admin.init() == []  # nothing missing any more
    assert LocalKeyring.open(tmp_path / "keyring.json").init() == []
    assert [(v.version, v.current) for v in admin.kek_versions()] == [(1, True)]
    assert admin.kek_versions()[0].created is not None


def test_rotate_signing_keeps_the_old_key_published(tmp_path: Path) -> None:
    ring = LocalKeyring.open(tmp_path / "keyring.json")
    old = ring.signing_key()
    token = jws.sign(b"{}", typ="t", key=old)
    new_kid = ring.rotate_signing()
    assert new_kid != old.kid and ring.signing_key().kid == new_kid
    assert states(ring) == {old.kid: SigningState.PUBLISHED, new_kid: SigningState.SIGNING}
    published = {k.kid: k for k in ring.public_signing_keys()}
    assert set(published) == {old.kid, new_kid}
    assert published[new_kid].current and not published[old.kid].current
    assert jws.verify(token, typ="t", keys=published)[0] == old.kid
    assert {k.alg for k in ring.signing_keys()} == {jws.ALG_ED25519, ALG_SM2}


def test_retire_destroys_the_private_key_and_withdraws_it(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    old = ring.signing_key().kid
    with pytest.raises(KeyUnusable, match="current"):
        ring.retire_signing(old)
    with pytest.raises(KeyUnusable, match="no signing key"):
        ring.retire_signing("nope")
    new = ring.rotate_signing()
    ring.retire_signing(old)
    ring.retire_signing(old)  # again: nothing more to do
    assert states(ring) == {old: SigningState.RETIRED, new: SigningState.SIGNING}
    assert [k.kid for k in ring.public_signing_keys()] == [new]
    entry = next(e for e in json.loads(path.read_text())["signing_keys"] if e["kid"] == old)
    assert "private" not in entry and entry["state"] == "retired" and entry["public"]
    reopened = LocalKeyring.open(path)
    assert states(reopened) == states(ring)
    assert reopened.signing_key().kid == new


def test_changes_reach_another_instance_within_the_refresh_interval(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    gateway_side = LocalKeyring.open(path)
    cli_side = LocalKeyring.open(path)
    assert cli_side.rotate() == 2
    kid = cli_side.rotate_signing()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if gateway_side.wrap(DEK, upload_id="u", dek_id=DEK_ID).kek_version == 2:
            break
        time.sleep(0.1)
    assert gateway_side.wrap(DEK, upload_id="u", dek_id=DEK_ID).kek_version == 2
    assert gateway_side.signing_key().kid == kid
    assert {k.kid for k in gateway_side.public_signing_keys()} == {
        k.kid for k in cli_side.public_signing_keys()
    }
    cli_side.rotate()
    gateway_side.refresh()  # at once
    assert gateway_side.current_version == 3


def test_a_sealed_keyring_is_reloaded_too(tmp_path: Path) -> None:
    protection = KeyringProtection.from_file(b"a passphrase for the test")
    path = tmp_path / "keyring.json"
    a = LocalKeyring.open(path, protection=protection)
    b = LocalKeyring.open(path, protection=protection)
    kid = b.rotate_signing()
    a.refresh()
    assert a.signing_key().kid == kid
    assert b"private" not in path.read_bytes()


def test_an_old_file_reads_compatibly(tmp_path: Path) -> None:
    """Before states: "retired" null or a timestamp, no public key, no alg."""
    path = tmp_path / "keyring.json"
    ring = LocalKeyring.open(path)
    first = ring.signing_key().kid
    ring.rotate_signing()
    ring.rotate_signing()
    doc = json.loads(path.read_text())
    for i, entry in enumerate(doc["signing_keys"]):
        for name in ("state", "public", "alg"):
            del entry[name]
        entry["retired"] = "2026-01-01T00:00:00+00:00" if i == 1 else None
    path.write_text(json.dumps(doc))
    old = LocalKeyring.open(path)
    kids = [e["kid"] for e in doc["signing_keys"]]
    # The newest unretired key signs; every other one is published (none was destroyed).
    assert states(old) == {
        kids[0]: SigningState.PUBLISHED,
        kids[1]: SigningState.PUBLISHED,
        kids[2]: SigningState.SIGNING,
    }
    assert kids[0] == first
    old.retire_signing(first)  # the first write gives every entry its state
    entries = json.loads(path.read_text())["signing_keys"]
    assert [e["state"] for e in entries] == ["retired", "published", "signing"]


def _rotate_many(path: str, times: int) -> None:
    ring = LocalKeyring.open(Path(path))
    for _ in range(times):
        ring.rotate()
        ring.rotate_signing()


def test_concurrent_rotations_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rotate_many, args=(str(path), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ring = LocalKeyring.open(path)
    assert [v.version for v in ring.kek_versions()] == list(range(1, 32))
    for alg in (jws.ALG_ED25519, ALG_SM2):
        keys = [k for k in ring.signing_keys() if k.alg == alg]
        assert len(keys) == 31
        assert [k.state for k in keys].count(SigningState.SIGNING) == 1


def test_two_instances_in_one_process_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.open(path)
    threads = [threading.Thread(target=_rotate_many, args=(str(path), 10)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert LocalKeyring.open(path).current_version == 21
