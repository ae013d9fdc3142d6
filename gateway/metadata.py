"""Upload-Metadata at rest: sealed under the upload's data key, never kept in plain text.

The header is sealed as it was received (its latin-1 bytes, as HTTP carries header
values) as the sealed value named "metadata" (docs/FORMAT.md), so HEAD answers it
byte for byte. Catalogs written before metadata was sealed hold it in plain text:
`seal_legacy_metadata` seals those rows in place when the service starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from gateway.catalog.base import LegacyMetadataCatalog, Upload
from gateway.keys.base import KeyProvider, KeyUnusable, WrappedKey
from gateway.runner import Runner
from gateway.sealed import Header, InvalidSealedData, Sealer, new_header
from gateway.suites import SUITE_AES256GCM, new_dek

log = logging.getLogger("gateway.metadata")

METADATA = "metadata"  # the sealed value's name: binds it to this field
_Change = tuple[Upload, WrappedKey | None]


def seal_metadata(sealer: Sealer, metadata: str | None) -> bytes | None:
    if metadata is None:
        return None
    return sealer.seal_value(METADATA, metadata.encode("latin-1"))


def open_metadata(sealer: Sealer, sealed: bytes) -> str:
    """The header as received; raises InvalidSealedData if it was tampered with or moved."""
    return sealer.open_value(METADATA, sealed).decode("latin-1")


@dataclass(frozen=True)
class ValueKey:
    """A data key for an upload without an object of its own (a final concatenation):
    its header is never written, it only keys the upload's sealed values."""

    header: Header
    wrapped: WrappedKey
    sealer: Sealer

    @classmethod
    def new(
        cls,
        keys: KeyProvider,
        *,
        upload_id: str,
        length: int,
        segment_size: int,
        suite: int = SUITE_AES256GCM,
    ) -> ValueKey:
        dek, dek_id = new_dek(suite), os.urandom(16)
        header = new_header(
            dek,
            upload_id=upload_id,
            dek_id=dek_id,
            segment_size=segment_size,
            plaintext_size=length,
            suite=suite,
        )
        wrapped = keys.wrap(dek, upload_id=upload_id, dek_id=dek_id)
        return cls(header, wrapped, Sealer(dek, header))


async def seal_legacy_metadata(
    catalog: LegacyMetadataCatalog,
    keys: KeyProvider,
    runner: Runner,
    *,
    segment_size: int,
    batch: int = 500,
) -> int:
    """Seal in place the plain-text metadata an older version left in the catalog.

    Idempotent, and safe to run in several processes at once. An upload whose key
    cannot be used now is left as it is (and logged) for the next start. Returns how
    many rows were sealed.
    """

    def read(after: str) -> list[_Change]:
        rows = catalog.legacy_metadata(after, batch)
        return [(row, catalog.wrapped_key(row.dek_id) if row.header else None) for row in rows]

    def seal_rows(rows: list[_Change]) -> list[_Change]:
        # An I/O thread: unwrapping may call a key service.
        return [c for row, w in rows if (c := _sealed(keys, row, w, segment_size)) is not None]

    sealed, after = 0, ""
    while rows := await runner.db(read, after):
        after = rows[-1][0].id
        changes = await runner.io(seal_rows, rows)
        sealed += await runner.db(catalog.seal_legacy_metadata, changes)
    if sealed:
        log.info("sealed the plain-text metadata of older uploads", extra={"count": sealed})
    return sealed


def _sealed(
    keys: KeyProvider, row: Upload, wrapped: WrappedKey | None, segment_size: int
) -> _Change | None:
    plain = row.legacy_metadata
    upload = replace(row, legacy_metadata=None, metadata=None)
    if not upload.header:
        # A final from before finals had a key of their own: give it one now.
        key = ValueKey.new(
            keys, upload_id=upload.id, length=upload.length or 0, segment_size=segment_size
        )
        keyed = replace(
            upload,
            header=key.header.encode(),
            dek_id=key.header.dek_id,
            metadata=seal_metadata(key.sealer, plain),
        )
        return keyed, key.wrapped
    if wrapped is None:
        # The key was shredded (a removal cut short): nothing can read this upload
        # any more, so its metadata goes with it.
        return upload, None
    try:
        dek = keys.unwrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
        sealer = Sealer(dek, Header.decode(upload.header))
    except (KeyUnusable, InvalidSealedData):
        log.warning(
            "cannot seal an upload's plain-text metadata: its key cannot be used",
            extra={"upload_id": upload.id},
        )
        return None
    return replace(upload, metadata=seal_metadata(sealer, plain)), None
