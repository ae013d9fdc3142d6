"""Builds, signs and stores the manifest of a finished upload (blocking; run in a worker)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence

from gateway import manifest
from gateway.catalog.base import RecordRow, Upload
from gateway.jws import SigningKey
from gateway.keys.base import WrappedKey
from gateway.layout import data_key, manifest_keys, reader_manifest_key, sm2_manifest_keys
from gateway.sealed import RECORD_OVERHEAD, Sealer
from gateway.store.base import ObjectStore

# Names under which the data key seals the reader's manifest and keys the plaintext digest.
READER_MANIFEST = "manifest"
READER_MANIFEST_SM2 = "manifest.sm2"
PLAINTEXT_DIGEST = "plaintext.sha256"


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_manifest(
    *,
    store: ObjectStore,
    store_name: str,
    signing: SigningKey,
    upload: Upload,
    records: Sequence[RecordRow],
    wrapped: WrappedKey,
    sealer: Sealer,
    plaintext_sha256: bytes,
    client_checksum: str | None,
    completed_at: float,
    retention: dict[str, object] | None = None,
    sm2_signing: Callable[[], SigningKey] | None = None,
) -> str:
    """Sign the reader's manifest and its stored view (MANIFEST.md, "Two views"); the
    stored view's compact JWS. The manifest's suite is the sealed object's; a suite-2
    manifest is signed with SM2 too, by the key `sm2_signing` returns (store_signed)."""
    records = sorted(records, key=lambda r: r.index)
    document = manifest.build_manifest(
        upload={
            "id": upload.id,
            "created": rfc3339(upload.created_at),
            "completed": rfc3339(completed_at),
            "uploader": {"principal": upload.owner, "tenant": upload.tenant},
            "length": upload.length,
            "client_checksum": client_checksum,
        },
        storage={
            "store": store_name,
            "key": data_key(upload.id),
            "size": sum(r.size for r in records),
            "part_size": upload.segment_size + RECORD_OVERHEAD,
            "part_count": len(records),
        },
        encryption={
            "segment_size": upload.segment_size,
            "segment_count": len(records),
            "header_sha256": sealer.suite.hash(upload.header).hexdigest(),
            "dek_id": upload.dek_id.hex(),
            "kek_id": wrapped.kek_id,
            "kek_version": wrapped.kek_version,
        },
        plaintext_size=upload.length or 0,
        plaintext_sha256=plaintext_sha256,
        plaintext_sha256_hmac=sealer.keyed_digest(PLAINTEXT_DIGEST, plaintext_sha256),
        record_sha256=[r.sha256 for r in records],
        retention=retention,
        signer_kid=signing.kid,
        signer_alg=signing.alg,
        suite=sealer.suite.id,
    )
    return store_signed(
        store=store,
        upload_id=upload.id,
        document=document,
        sealer=sealer,
        signing=signing,
        sm2_signing=sm2_signing,
    )


def store_signed(
    *,
    store: ObjectStore,
    upload_id: str,
    document: dict[str, object],
    sealer: Sealer,
    signing: SigningKey,
    sm2_signing: Callable[[], SigningKey] | None = None,
) -> str:
    """Sign a reader's manifest and its stored view and store them; the stored view's
    compact JWS.

    The reader's one, which discloses the plaintext SHA-256 and the client's checksum, is
    stored sealed under the upload's data key; the bucket's readable copy has neither. A
    suite-2 manifest gets the SM2 form of both views beside their JWS (MANIFEST.md, "SM2"):
    without an SM2 key it is not written at all (KeyUnusable from `sm2_signing`, or
    ValueError), so the upload does not complete with half its proof.
    """
    stored = manifest.stored_view(document)
    sm2_key = None
    if manifest.needs_sm2(document):
        if sm2_signing is None:
            raise ValueError("a suite-2 manifest needs an SM2 signing key")
        sm2_key = sm2_signing()
    reader_jws = manifest.sign(document, signing).encode("ascii")
    store.put(reader_manifest_key(upload_id), sealer.seal_value(READER_MANIFEST, reader_jws))
    json_key, jws_key = manifest_keys(upload_id)
    if sm2_key is not None:
        sm2_key_stored, sm2_key_sealed = sm2_manifest_keys(upload_id)
        reader_sm2 = manifest.sign_sm2(document, sm2_key).encode("ascii")
        store.put(sm2_key_sealed, sealer.seal_value(READER_MANIFEST_SM2, reader_sm2))
        store.put(sm2_key_stored, manifest.sign_sm2(stored, sm2_key).encode("ascii"))
    # The stored JWS last: its presence means the manifest is written.
    store.put(json_key, manifest.canonical_json(stored))
    stored_jws = manifest.sign(stored, signing)
    store.put(jws_key, stored_jws.encode("ascii"))
    return stored_jws


def open_reader_manifest(store: ObjectStore, upload_id: str, sealer: Sealer) -> str:
    """The reader's signed manifest (compact JWS) of an upload; ObjectNotFound for one
    signed before version 2, whose stored manifest is the reader's as well."""
    sealed = store.get(reader_manifest_key(upload_id))
    return sealer.open_value(READER_MANIFEST, sealed).decode("ascii")


def open_reader_sm2(store: ObjectStore, upload_id: str, sealer: Sealer) -> str:
    """The SM2 form of a suite-2 upload's reader's manifest; ObjectNotFound for others."""
    sealed = store.get(sm2_manifest_keys(upload_id)[1])
    return sealer.open_value(READER_MANIFEST_SM2, sealed).decode("ascii")


def write_concat_manifest(
    *,
    store: ObjectStore,
    signing: SigningKey,
    final: Upload,
    partials: Sequence[Upload],
) -> str:
    """Sign the manifest of a final concatenation from what its partials recorded: each is
    pinned by the SHA-256 of its own signed manifest. No partial's bytes are read.
    Returns its compact JWS."""
    described: list[dict[str, object]] = []
    for partial in partials:
        _, jws_key = manifest_keys(partial.id)
        described.append(
            {
                "id": partial.id,
                "length": partial.length,
                "manifest_jws_sha256": hashlib.sha256(store.get(jws_key)).hexdigest(),
            }
        )
    document = manifest.build_concat_manifest(
        upload={
            "id": final.id,
            "created": rfc3339(final.created_at),
            "completed": rfc3339(final.completed_at or final.created_at),
            "uploader": {"principal": final.owner, "tenant": final.tenant},
            "length": final.length,
        },
        parts=described,
        plaintext_size=final.length or 0,
        signer_kid=signing.kid,
        signer_alg=signing.alg,
    )
    json_key, jws_key = manifest_keys(final.id)
    store.put(json_key, manifest.canonical_json(document))
    jws = manifest.sign(document, signing)
    store.put(jws_key, jws.encode("ascii"))
    return jws
