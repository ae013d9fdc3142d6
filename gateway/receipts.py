"""Deletion receipts: a signed statement that an upload's key and objects are gone.

A receipt is a compact JWS (typ `imgw-deletion-receipt+jws`, so it can never pass for a
manifest, nor a manifest for it) whose payload is canonical JSON (RFC 8785):

    {"receipt_version": 1, "upload_id": ..., "deleted_at": RFC 3339 UTC,
     "deleted_by": {"principal", "tenant"} | {"admin": ...} | {"reaper": "expiry"|"retention"},
     "reason": "client" | "admin" | "expiry" | "retention",
     "manifest_jws_sha256": hex | null, "dek_id": hex, "kek_id": ..., "kek_version": ...,
     "key_destroyed": true, "objects_deleted": true}

It is signed with the provider's current signing key and verified with the JWKS, like a
manifest. docs/MANIFEST.md ("Deletion receipts") describes it for auditors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway import jws
from gateway.catalog.base import Deletion
from gateway.keys.base import KeyProvider
from gateway.manifest import canonical_json, verify_canonical
from gateway.signer import rfc3339

TYP = "imgw-deletion-receipt+jws"
VERSION = 1
REASONS = frozenset({"client", "admin", "expiry", "retention", "unrecorded"})
_MEMBERS = frozenset(
    {
        "receipt_version",
        "upload_id",
        "deleted_at",
        "deleted_by",
        "reason",
        "manifest_jws_sha256",
        "dek_id",
        "kek_id",
        "kek_version",
        "key_destroyed",
        "objects_deleted",
    }
)


class ReceiptError(Exception):
    """A receipt failed verification; the message says which check."""


def build(deletion: Deletion, *, deleted_at: float) -> dict[str, object]:
    """The receipt's payload for a removal that finished at `deleted_at`."""
    if deletion.reason not in REASONS:
        raise ValueError(f"unknown deletion reason {deletion.reason!r}")
    return {
        "receipt_version": VERSION,
        "upload_id": deletion.upload_id,
        "deleted_at": rfc3339(deleted_at),
        "deleted_by": dict(deletion.deleted_by),
        "reason": deletion.reason,
        "manifest_jws_sha256": deletion.manifest_sha256,
        "dek_id": deletion.dek_id.hex(),
        "kek_id": deletion.kek_id,
        "kek_version": deletion.kek_version,
        "key_destroyed": True,
        "objects_deleted": True,
    }


def sign(payload: Mapping[str, object], key: jws.SigningKey) -> str:
    return jws.sign(canonical_json(dict(payload)), typ=TYP, key=key)


def verify(token: str, keys: Mapping[str, jws.PublicSigningKey]) -> tuple[str, dict[str, object]]:
    """(kid, payload) of a valid receipt; ReceiptError naming the failed check."""
    try:
        kid, payload = verify_canonical(token.strip(), typ=TYP, keys=keys)
    except (jws.JWSError, ValueError) as exc:
        raise ReceiptError(str(exc)) from None
    if set(payload) != _MEMBERS:
        raise ReceiptError("the payload does not have exactly a receipt's members")
    if payload["receipt_version"] != VERSION or type(payload["receipt_version"]) is not int:
        raise ReceiptError(f"unsupported receipt_version {payload['receipt_version']!r}")
    if payload["key_destroyed"] is not True or payload["objects_deleted"] is not True:
        raise ReceiptError("the receipt does not state the key destroyed and objects deleted")
    return kid, payload


class Receipts:
    """Signs receipts with the provider's current signing key (`ReceiptSigner`)."""

    def __init__(self, keys: KeyProvider) -> None:
        self._keys = keys

    def issue(self, deletion: Deletion, *, deleted_at: float) -> str:
        return sign(build(deletion, deleted_at=deleted_at), self._keys.signing_key())


def pretty(payload: Mapping[str, object]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)
