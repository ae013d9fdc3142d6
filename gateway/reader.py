"""The decrypting reader: a stored upload's plaintext, record by record, with ranges."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

from gateway.buffers import BufferPool, Pools
from gateway.catalog.base import RecordRow, Upload, UploadCatalog, UploadState
from gateway.keys.base import KeyProvider
from gateway.layout import data_key
from gateway.sealed import (
    HEADER_PREFIX_LEN,
    MAX_HEADER_LEN,
    RECORD_OVERHEAD,
    Header,
    InvalidSealedData,
    SealedFormatError,
    Sealer,
    header_length,
    object_layout,
)
from gateway.store.base import ObjectStore, reads_into

CHUNK = 1 << 20  # plaintext passed on at once, copied out of the pooled buffer
# Idle record buffers kept for downloads (of each kind): more downloads at once take
# fresh ones and free them, so a burst of readers leaves no lasting memory behind.
READ_KEEP = 2


class NotReadable(Exception):
    """The upload is unfinished, unknown, or its key is gone."""


class NotAsRecorded(InvalidSealedData):
    """The stored object is not the one the catalog recorded: its layout, its length,
    or a record that is not the sealing the catalog names (an earlier one, say)."""


@dataclass(frozen=True)
class _Piece:
    upload: Upload
    start: int  # plaintext offset of this piece within the whole (concatenated) upload


@dataclass(frozen=True)
class _Record:
    index: int
    offset: int  # in the object
    size: int  # nonce || ciphertext || tag
    final: bool
    sha256: bytes  # the suite's digest of those bytes, as the catalog recorded it

    @property
    def plaintext_len(self) -> int:
        return self.size - RECORD_OVERHEAD


@dataclass(frozen=True)
class _Object:
    """One sealed object, opened: its checked header's sealer and its records."""

    key: str
    sealer: Sealer
    length: int
    records: list[_Record]


def recorded_records(
    layout: Sequence[tuple[int, int, int, bool]],
    rows: Sequence[RecordRow],
    header_len: int,
    length: int | None,
) -> list[_Record]:
    """Join an object's layout (from its size) with the records the catalog recorded.

    The two must agree record for record (index, size, final flag) and add up to the
    catalog's length; anything else raises NotAsRecorded.
    """
    rows = sorted(rows, key=lambda r: r.index)
    if len(rows) != len(layout):
        raise NotAsRecorded(f"{len(layout)} records are stored, {len(rows)} recorded")
    records = []
    for (index, offset, size, final), row in zip(layout, rows, strict=True):
        part = size + (header_len if index == 0 else 0)
        if (row.index, row.final, row.plaintext_len + RECORD_OVERHEAD, row.size) != (
            index,
            final,
            size,
            part,
        ):
            raise NotAsRecorded(f"record {index} is not stored as it was recorded")
        records.append(_Record(index, offset, size, final, row.sha256))
    total = sum(r.plaintext_len for r in records)
    if length is not None and total != length:
        raise NotAsRecorded(f"the records hold {total} bytes, the catalog says {length}")
    return records


class Reader:
    """Reads what the gateway stored, without the gateway running: store + catalog + keys.

    Everything a read returns is checked against what the catalog recorded: before the
    first byte, each object's key commitment, header, layout and length (catalog length
    == records == the header's declared size); each record, before any of its bytes, by
    the SHA-256 the catalog recorded for it and then by its tag. A read that reaches an
    object's end authenticates its final record, even an empty one, and `read` returns
    its last byte only after every check has passed, so a read that fails never ends
    as if complete. A range read opens only the records it touches. All calls block (use
    a worker thread).
    """

    def __init__(
        self,
        store: ObjectStore,
        catalog: UploadCatalog,
        keys: KeyProvider,
        *,
        pools: Pools | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._keys = keys
        # Each record is read and opened in pooled buffers: shared with the writer in
        # the app, so a download's megabytes do not stay behind in the C heap.
        self._pools = pools if pools is not None else Pools(keep=2)

    def _pieces(self, upload: Upload) -> list[_Piece]:
        if upload.state != UploadState.COMPLETE:
            raise NotReadable(f"upload {upload.id} is not finished")
        if not upload.partials:
            return [_Piece(upload, 0)]
        pieces, start = [], 0
        for partial_id in upload.partials:
            partial = self._catalog.get_upload(partial_id)
            # A partial the client deleted stays readable while finals use it.
            if partial is None or partial.completed_at is None or partial.length is None:
                raise NotReadable(f"partial upload {partial_id} is gone")
            pieces.append(_Piece(partial, start))
            start += partial.length
        if start != upload.length:
            raise NotAsRecorded(
                f"the partials hold {start} bytes, the catalog says {upload.length}"
            )
        return pieces

    def read(
        self, upload: Upload, start: int = 0, end: int | None = None
    ) -> Generator[bytes, None, None]:
        """Plaintext bytes [start, end) of a finished upload (a final one spans its partials)."""
        length = upload.length or 0
        end = length if end is None else min(end, length)
        return _last_byte_last(self._read(upload, start, end), max(end - start, 0))

    def _read(self, upload: Upload, start: int, end: int) -> Generator[bytes, None, None]:
        opened = []
        # Every object is checked before the first byte: those the read touches are
        # opened, the layout of the others is checked (their lengths place the rest).
        for piece in self._pieces(upload):
            piece_len = piece.upload.length or 0
            lo, hi = max(start - piece.start, 0), min(end - piece.start, piece_len)
            if lo < hi or (piece_len == 0 and start <= piece.start <= end):
                opened.append((self._open(piece.upload), lo, hi))
            else:
                self._layout(piece.upload)
        for obj, lo, hi in opened:
            yield from self._plaintext(obj, lo, hi)

    def read_object(
        self, upload: Upload, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext [start, end) of one sealed object, whatever the upload's recorded state."""
        obj = self._open(upload)
        end = obj.length if end is None else min(end, obj.length)
        yield from self._plaintext(obj, start, end)

    def plaintext_digest(self, upload: Upload) -> bytes:
        """The suite's hash (SHA-256 or SM3) of a finished upload's whole plaintext, read
        back once: for a manifest whose writer lost its running hash (a restart, or the
        upload moved to another process between PATCHes)."""
        obj = self._open(upload)
        digest = obj.sealer.suite.hash()
        for chunk in self._plaintext(obj, 0, obj.length):
            digest.update(chunk)
        return digest.digest()

    def _open(self, upload: Upload) -> _Object:
        wrapped = self._catalog.wrapped_key(upload.dek_id)
        if wrapped is None:
            raise NotReadable(f"the key of upload {upload.id} was destroyed")
        dek = self._keys.unwrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
        header, records = self._layout(upload)
        sealer = Sealer(dek, header)  # checks the key commitment
        length = sum(r.plaintext_len for r in records)
        return _Object(data_key(upload.id), sealer, length, records)

    def _layout(self, upload: Upload) -> tuple[Header, list[_Record]]:
        """The stored header and records, checked against the catalog (no key needed)."""
        key = data_key(upload.id)
        stored_header = read_header(self._store, key)
        hlen = len(stored_header)
        if stored_header != upload.header:
            raise NotAsRecorded("the stored header is not the recorded one")
        header = Header.decode(stored_header)
        layout = object_layout(header, hlen, self._store.size(key))
        records = recorded_records(layout, self._catalog.records(upload.id), hlen, upload.length)
        return header, records

    def _plaintext(self, obj: _Object, start: int, end: int) -> Iterator[bytes]:
        size = obj.sealer.header.segment_size
        through_end = end >= obj.length
        for record in obj.records:
            seg_start = record.index * size
            # The final record is read whenever the read reaches the end, even when it
            # holds no byte of it (an empty final record): it proves nothing was cut.
            if not (record.final and through_end):
                if seg_start >= end:
                    break
                if seg_start + record.plaintext_len <= start:
                    continue
            lo, hi = max(start - seg_start, 0), min(end - seg_start, record.plaintext_len)
            yield from self._record_plaintext(obj, record, lo, hi)

    def _record_plaintext(self, obj: _Object, record: _Record, lo: int, hi: int) -> Iterator[bytes]:
        """Bytes [lo, hi) of a record's plaintext, once the whole record is checked and
        opened in a pooled buffer, which goes back when they are passed on (or the read
        is closed early). A store that reads into buffers (the folder store) reads the
        record into one, where it is opened in place; otherwise (S3 returns fresh bytes)
        it is opened into one.

        They come as copies of at most CHUNK bytes, never as views of the buffer: the
        server may keep a chunk it could not send at once while the buffer is reused.
        """
        if reads_into(self._store):
            pool = self._sealed_pool(obj)
            buffer = pool.take()
            try:
                with memoryview(buffer)[: record.size] as room:
                    got = self._store.get_range_into(obj.key, record.offset, room)
                    sealed = room[:got]
                    self._check_recorded(obj, record, sealed)
                    plain = obj.sealer.open_record_in_place(record.index, record.final, sealed)
                    yield from _copies(plain, lo, hi)
            finally:
                pool.give(buffer)
            return
        data = memoryview(self._store.get(obj.key, record.offset, record.size))
        self._pools.sized.released(data.nbytes)  # freed once opened
        self._check_recorded(obj, record, data)
        pool = self._pools.for_size(obj.sealer.header.segment_size, keep=READ_KEEP)
        buffer = pool.take()
        try:
            with memoryview(buffer)[: record.plaintext_len] as out:
                obj.sealer.open_record_into(record.index, record.final, data, out)
                del data  # the fresh bytes, freed before the record is passed on
                yield from _copies(out, lo, hi)
        finally:
            pool.give(buffer)

    def _check_recorded(self, obj: _Object, record: _Record, sealed: memoryview) -> None:
        """The tag alone would accept any sealing of this record under the upload's key,
        such as one from a body refused with 460: only the recorded one is served."""
        if sealed.nbytes != record.size or not hmac.compare_digest(
            obj.sealer.suite.hash(sealed).digest(), record.sha256
        ):
            raise NotAsRecorded(f"record {record.index} is not the sealing that was recorded")

    def _sealed_pool(self, obj: _Object) -> BufferPool:
        """Whole sealed records: the writer's pool for them too (whichever makes it first
        sets how many idle ones it keeps)."""
        return self._pools.for_size(
            obj.sealer.header.segment_size + RECORD_OVERHEAD, keep=READ_KEEP
        )


def _copies(plain: memoryview, lo: int, hi: int) -> Iterator[bytes]:
    for at in range(lo, hi, CHUNK):
        yield bytes(plain[at : min(at + CHUNK, hi)])


def read_header(store: ObjectStore, key: str) -> bytes:
    """The encoded header at the front of the sealed object `key`, in one read.

    Raises SealedFormatError for an object shorter than the header it announces.
    """
    first = store.get(key, 0, MAX_HEADER_LEN)
    hlen = header_length(first[:HEADER_PREFIX_LEN])
    if len(first) < hlen:
        raise SealedFormatError(f"the object is shorter than its {hlen}-byte header")
    return first[:hlen]


def _last_byte_last(
    chunks: Generator[bytes, None, None], expected: int
) -> Generator[bytes, None, None]:
    """Pass `chunks` on, holding the very last byte back until they ended without error.

    The checks that come after the last plaintext byte (an empty final record, a later
    empty partial) then still decide whether the read ends complete or cut short.
    """
    sent, held = 0, b""
    with contextlib.closing(chunks):  # closed early, the reads give their buffers back
        for chunk in chunks:
            sent += len(chunk)
            if sent > expected:
                raise NotAsRecorded(f"the read returned more than the {expected} bytes asked for")
            if sent == expected:
                chunk, held = chunk[:-1], chunk[-1:]
            if chunk:
                yield chunk
    if sent != expected:
        raise NotAsRecorded(f"the read returned {sent} of the {expected} bytes asked for")
    if held:
        yield held
