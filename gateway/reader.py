"""The decrypting reader: a stored upload's plaintext, record by record, with ranges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.catalog.base import COMPLETE, Catalog, Upload
from gateway.keys.base import KeyProvider
from gateway.layout import data_key
from gateway.sealed import (
    HEADER_PREFIX_LEN,
    Header,
    InvalidSealedData,
    Sealer,
    header_length,
    iter_records,
)
from gateway.store.base import ObjectStore


class NotReadable(Exception):
    """The upload is unfinished, unknown, or its key is gone."""


@dataclass(frozen=True)
class _Piece:
    upload: Upload
    start: int  # plaintext offset of this piece within the whole (concatenated) upload


class Reader:
    """Reads what the gateway stored, without the gateway running: store + catalog + keys.

    Every record is authenticated before any of its bytes are returned; a range read
    decrypts only the records it touches. All calls block (use a worker thread).
    """

    def __init__(self, store: ObjectStore, catalog: Catalog, keys: KeyProvider) -> None:
        self._store = store
        self._catalog = catalog
        self._keys = keys

    def _pieces(self, upload: Upload) -> list[_Piece]:
        if upload.state != COMPLETE:
            raise NotReadable(f"upload {upload.id} is not finished")
        if not upload.parts:
            return [_Piece(upload, 0)]
        pieces, start = [], 0
        for part_id in upload.parts:
            part = self._catalog.get_upload(part_id)
            # A partial the client deleted stays readable while finals use it.
            if part is None or part.completed_at is None or part.length is None:
                raise NotReadable(f"partial upload {part_id} is gone")
            pieces.append(_Piece(part, start))
            start += part.length
        return pieces

    def read(self, upload: Upload, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Plaintext bytes [start, end) of a finished upload (a final one spans its partials)."""
        length = upload.length or 0
        end = length if end is None else min(end, length)
        for piece in self._pieces(upload):
            piece_len = piece.upload.length or 0
            lo, hi = max(start - piece.start, 0), min(end - piece.start, piece_len)
            if lo < hi:
                yield from self.read_object(piece.upload, lo, hi)

    def read_object(
        self, upload: Upload, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext [start, end) of one sealed object, whatever the upload's recorded state."""
        end = (upload.length or 0) if end is None else end
        wrapped = self._catalog.wrapped_key(upload.dek_id)
        if wrapped is None:
            raise NotReadable(f"the key of upload {upload.id} was destroyed")
        dek = self._keys.unwrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
        key = data_key(upload.id)
        prefix = self._store.get(key, 0, HEADER_PREFIX_LEN)
        hlen = header_length(prefix)
        stored_header = self._store.get(key, 0, hlen)
        if stored_header != upload.header:
            raise InvalidSealedData("the stored header is not the recorded one")
        header = Header.decode(stored_header)
        sealer = Sealer(dek, header)
        size = header.segment_size
        for index, offset, rsize, final in iter_records(hlen, size, self._store.size(key)):
            seg_start = index * size
            if seg_start >= end:
                break
            if seg_start + size <= start and not final:
                continue
            plain = sealer.open_record(index, final, self._store.get(key, offset, rsize))
            lo, hi = max(start - seg_start, 0), min(end - seg_start, len(plain))
            if lo < hi:
                yield plain[lo:hi]
