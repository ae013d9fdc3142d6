"""Builds, signs and stores the manifest of a finished upload (blocking; run in a worker)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from gateway import manifest
from gateway.catalog.base import RecordRow, Upload
from gateway.jws import SigningKey
from gateway.keys.base import WrappedKey
from gateway.layout import data_key, manifest_keys, reader_manifest_key
from gateway.reader import Reader
from gateway.sealed import RECORD_OVERHEAD, Sealer
from gateway.store.base import ObjectStore

# Names under which the data key seals the reader's manifest and keys the plaintext digest.
READER_MANIFEST = "manifest"
PLAINTEXT_DIGEST = "plaintext.sha256"


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plaintext_digest(reader: Reader, upload: Upload) -> bytes:
    """SHA-256 of a finished upload's plaintext, by reading its records back once.

    Only needed when the running hash of the write path was lost (a restart, or the
    upload moved to another process between PATCHes).
    """
    digest = hashlib.sha256()
    for chunk in reader.read_object(upload):
        digest.update(chunk)
    return digest.digest()


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
) -> str:
    """Sign the reader's manifest and its stored view (MANIFEST.md, "Two views"); the
    stored view's compact JWS.

    The reader's one, which discloses the plaintext SHA-256 and the client's checksum, is
    stored sealed under the upload's data key; the bucket's readable copy has neither.
    """
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
    stored = manifest.stored_view(document)
    reader_jws = manifest.sign(document, signing).encode("ascii")
    store.put(reader_manifest_key(upload.id), sealer.seal_value(READER_MANIFEST, reader_jws))
    # The stored JWS last: its presence means the manifest is written.
    json_key, jws_key = manifest_keys(upload.id)
    store.put(json_key, manifest.canonical_json(stored))
    stored_jws = manifest.sign(stored, signing)
    store.put(jws_key, stored_jws.encode("ascii"))
    return stored_jws


def open_reader_manifest(store: ObjectStore, upload_id: str, sealer: Sealer) -> str:
    """The reader's signed manifest (compact JWS) of an upload; ObjectNotFound for one
    signed before version 2, whose stored manifest is the reader's as well."""
    sealed = store.get(reader_manifest_key(upload_id))
    return sealer.open_value(READER_MANIFEST, sealed).decode("ascii")


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
