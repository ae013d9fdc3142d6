"""Completion: the recorded records checked to form a whole object, then assembled."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.catalog.base import RecordRow
from gateway.layout import tail_prefix
from gateway.store.base import ObjectStore, PartRef
from gateway.writer.base import RunningHash, corrupt, part_offset


def part_refs(rows: Sequence[RecordRow], header_len: int, segment_size: int) -> list[PartRef]:
    """The parts to assemble, from the records as recorded (sorted by index).

    Raises STORED_DATA_CORRUPT unless they are records 0..n-1 with only the last final.
    """
    whole = [r.index for r in rows] == list(range(len(rows)))
    if not rows or not whole or not rows[-1].final or any(r.final for r in rows[:-1]):
        raise corrupt("the recorded records do not form a whole object")
    return [
        PartRef(r.index + 1, part_offset(header_len, segment_size, r.index), r.size, r.etag)
        for r in rows
    ]


def plaintext_sha256(running: RunningHash | None, records: int) -> bytes | None:
    """The whole plaintext's digest (the suite's hash), if the running hash saw every one
    of `records`."""
    if running is None or running.next_index != records:
        return None
    digest: bytes = running.digest.digest()
    return digest


def finish_object(
    store: ObjectStore, key: str, multipart_id: str, upload_id: str, parts: list[PartRef]
) -> None:
    """Assemble the object from its parts and drop the upload's tail pieces (blocking)."""
    store.complete_multipart(key, multipart_id, parts)
    store.delete_prefix(tail_prefix(upload_id))
