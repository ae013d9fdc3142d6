"""Deletion receipts (gateway/receipts.py): what they say, and that only a real one passes."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import jws, manifest, receipts
from gateway.catalog.base import Deletion
from gateway.jws import Ed25519SigningKey
from gateway.manifest import ManifestError, canonical_json

KEY = Ed25519SigningKey("gw-1", Ed25519PrivateKey.from_private_bytes(bytes(32)))
OTHER = Ed25519SigningKey("gw-1", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEYS = {KEY.kid: KEY.public()}
DELETION = Deletion(
    upload_id="3f9c0a7e5b2d4c1e8a6f0b9d7c5e3a1f",
    requested_at=1_772_359_542.0,
    reason="client",
    deleted_by={"principal": "alice", "tenant": "clinic-7"},
    manifest_sha256="ab" * 32,
    dek_id=bytes(16),
    kek_id="local",
    kek_version=2,
)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resigned(payload: bytes, typ: str = receipts.TYP) -> str:
    """A token signed with the right key over any payload (what only an insider makes)."""
    return jws.sign(payload, typ=typ, key=KEY)


def test_a_receipt_says_what_was_deleted_when_and_by_whom() -> None:
    token = receipts.sign(receipts.build(DELETION, deleted_at=1_772_359_543.5), KEY)
    assert jws.header_of(token) == {"alg": "Ed25519", "kid": "gw-1", "typ": receipts.TYP}
    kid, payload = receipts.verify(token, KEYS)
    assert kid == "gw-1"
    assert payload == {
        "receipt_version": 1,
        "upload_id": DELETION.upload_id,
        "deleted_at": "2026-03-01T10:05:43.500000Z",
        "deleted_by": {"principal": "alice", "tenant": "clinic-7"},
        "reason": "client",
        "manifest_jws_sha256": "ab" * 32,
        "dek_id": "00" * 16,
        "kek_id": "local",
        "kek_version": 2,
        "key_destroyed": True,
        "objects_deleted": True,
    }
    # The payload is the canonical JSON of exactly that.
    assert jws.payload_of(token) == canonical_json(payload)
    assert receipts.verify(token + "\n", KEYS)[0] == "gw-1"  # as a file holds it


def test_a_tampered_receipt_fails() -> None:
    token = receipts.sign(receipts.build(DELETION, deleted_at=1.0), KEY)
    header, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["upload_id"] = "someone-elses-upload-id-000000000"
    forged = f"{header}.{b64u(canonical_json(payload))}.{signature}"
    with pytest.raises(receipts.ReceiptError, match="bad signature"):
        receipts.verify(forged, KEYS)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(receipts.ReceiptError):
        receipts.verify(f"{header}.{body}.{flipped}", KEYS)


def test_a_receipt_signed_by_another_key_fails() -> None:
    token = receipts.sign(receipts.build(DELETION, deleted_at=1.0), OTHER)  # same kid
    with pytest.raises(receipts.ReceiptError, match="bad signature"):
        receipts.verify(token, KEYS)
    with pytest.raises(receipts.ReceiptError, match="unknown kid"):
        receipts.verify(token, {})


def test_a_manifest_is_no_receipt_and_a_receipt_no_manifest() -> None:
    document = {"manifest_version": 2, "signer": {"kid": "gw-1", "alg": "Ed25519"}}
    signed_manifest = manifest.sign(document, KEY)
    with pytest.raises(receipts.ReceiptError, match="wrong typ"):
        receipts.verify(signed_manifest, KEYS)
    receipt = receipts.sign(receipts.build(DELETION, deleted_at=1.0), KEY)
    with pytest.raises(ManifestError, match="wrong typ"):
        manifest.verify(receipt, KEYS)
    # A receipt's payload under the manifest's typ is no receipt either.
    payload = jws.payload_of(receipt)
    with pytest.raises(receipts.ReceiptError, match="wrong typ"):
        receipts.verify(resigned(payload, typ=manifest.JWS_TYP), KEYS)


def test_only_a_receipts_exact_payload_passes() -> None:
    good = receipts.build(DELETION, deleted_at=1.0)
    cases = {
        "not canonical": json.dumps(good, indent=1).encode(),
        "exactly a receipt's members": canonical_json({**good, "extra": 1}),
        "receipt_version": canonical_json({**good, "receipt_version": 2}),
        "key destroyed": canonical_json({**good, "key_destroyed": False}),
        "not a JSON object": b"[]",
    }
    for reason, payload in cases.items():
        with pytest.raises(receipts.ReceiptError, match=reason):
            receipts.verify(resigned(payload), KEYS)
    without = dict(good)
    del without["objects_deleted"]
    with pytest.raises(receipts.ReceiptError, match="members"):
        receipts.verify(resigned(canonical_json(without)), KEYS)


def test_an_unknown_reason_is_not_signed() -> None:
    with pytest.raises(ValueError, match="reason"):
        receipts.build(Deletion(**{**DELETION.__dict__, "reason": "whim"}), deleted_at=1.0)
