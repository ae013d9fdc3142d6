"""One PATCH body -> sealed records and tail pieces, sealed while the next bytes arrive.

Bytes fill a segment buffer. A full segment is handed to a task that hashes and seals
it in a worker thread (in order, under `_seal_lock`) and then stores it as one part,
while the event loop fills the next buffer; at most `depth` segments are in flight.
Records are recorded in the catalog in order, after their part is durable: at once
(progressive) or, when the PATCH carries Upload-Checksum, only after the digest of
the whole body verifies. A body that ends mid-segment leaves its new bytes as one
sealed tail piece, a new object; nothing is ever rewritten in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.buffers import Pools
from gateway.catalog.base import Catalog, Progress, RecordRow, TailPiece, Upload
from gateway.checksums import Hasher, new_hasher
from gateway.errors import ERR, GatewayError
from gateway.layout import data_key, tail_key, tail_prefix
from gateway.leases import Control
from gateway.runner import Runner
from gateway.sealed import RECORD_OVERHEAD, InvalidSealedData, Sealer
from gateway.store.base import ObjectStore, PartRef
from gateway.tus.headers import ChecksumHeader


class BodyInterrupted(Exception):
    """The client went away before the body ended."""


class Overflow(Exception):
    """The body carries more bytes than the upload may hold."""


def part_offset(header_len: int, segment_size: int, index: int) -> int:
    """Where REC_index starts in the object (part index+1; part 1 starts with HEADER)."""
    return 0 if index == 0 else header_len + index * (segment_size + RECORD_OVERHEAD)


@dataclass
class RunningHash:
    """SHA-256 over the plaintext of records 0 .. next_index-1, carried between requests."""

    next_index: int
    digest: Any = field(default_factory=hashlib.sha256)


# Called once the object is complete and before the upload is marked complete: the
# records as recorded and the plaintext SHA-256 if the running hash covered it all.
OnComplete = Callable[[Upload, list[RecordRow], bytes | None], Awaitable[None]]


@dataclass
class Outcome:
    offset: int  # what the catalog now records
    complete: bool
    stop_reason: str | None  # why reading stopped early, if it did


class SegmentWriter:
    def __init__(
        self,
        *,
        upload: Upload,
        sealer: Sealer,
        store: ObjectStore,
        catalog: Catalog,
        runner: Runner,
        control: Control,
        checksum: ChecksumHeader | None,
        limit: int,
        depth: int,
        expires_at: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
        content_length: int | None = None,
        running_hash: RunningHash | None = None,
        on_complete: OnComplete | None = None,
        pools: Pools | None = None,
    ) -> None:
        self.upload = upload
        # The plaintext hash goes on only from where the last request left it.
        start = upload.offset // upload.segment_size
        self._running = running_hash if running_hash and running_hash.next_index == start else None
        if self._running is None and start == 0:
            self._running = RunningHash(0)
        self._on_complete = on_complete
        self.completed = False
        self._content_length = content_length  # what the body announced, if it did
        self._sealer = sealer
        self._store = store
        self._catalog = catalog
        self._runner = runner
        self._control = control
        self._checksum = checksum
        self._client_hash: Hasher | None = new_hasher(checksum.algorithm) if checksum else None
        # With a checksum nothing may be recorded before the whole body verifies.
        self._progressive = checksum is None
        self._limit = limit  # the upload's length, or the max size while it is deferred
        self._depth = depth
        self._expires_at = expires_at
        self._clock = clock
        self._seal_lock = asyncio.Lock()
        self._inflight: deque[asyncio.Task[RecordRow]] = deque()
        self._pending: list[RecordRow] = []
        self._segment_size = upload.segment_size
        self._segment = upload.offset // self._segment_size
        self._fill = upload.offset % self._segment_size
        self._new_from = self._fill  # bytes before this came from earlier requests
        pools = pools if pools is not None else Pools(keep=0)
        self._plain_pool = pools.for_size(self._segment_size)
        self._record_pool = pools.for_size(self._segment_size + RECORD_OVERHEAD)
        self._buf = self._plain_pool.take()
        self._next_piece = 0
        self._old_pieces: list[TailPiece] = []
        self._last_sealed_final = False
        self._final_recorded = False
        self.received = 0
        self.committed = upload.offset
        self.interrupted = False  # the body ended early (client gone, stopped)

    # -- before the body ----------------------------------------------------------------

    async def prepare(self) -> None:
        """Bring the unfinished segment's tail pieces back into the buffer."""
        upload = self.upload
        if upload.length is not None and upload.offset == upload.length:
            rows = await self._runner.db(self._catalog.records, upload.id)
            if any(r.final for r in rows):
                self._final_recorded = True
                return
        pieces = await self._runner.db(self._catalog.tail_pieces, self.upload.id)
        pieces = sorted((p for p in pieces if p.segment == self._segment), key=lambda p: p.piece)
        if pieces or self._fill:
            await self._runner.io(self._load_pieces, pieces)
        self._old_pieces = pieces
        self._next_piece = pieces[-1].piece + 1 if pieces else 0

    def _load_pieces(self, pieces: list[TailPiece]) -> None:
        position = 0
        for piece in pieces:
            blob = self._store.get(tail_key(self.upload.id, piece.segment, piece.piece))
            try:
                plain = self._sealer.open_tail(piece.segment, piece.piece, piece.start, blob)
            except InvalidSealedData as exc:
                raise _corrupt(f"tail piece {piece.segment}/{piece.piece}") from exc
            if piece.start != position or len(plain) != piece.length:
                raise _corrupt(f"tail piece {piece.segment}/{piece.piece} is out of place")
            self._buf[position : position + len(plain)] = plain
            position += len(plain)
        if position != self._fill:
            raise _corrupt("tail pieces do not cover the recorded offset")

    # -- the body -----------------------------------------------------------------------

    async def receive(self, body: AsyncIterator[bytes]) -> None:
        control = self._control
        task = asyncio.current_task()
        iterator = aiter(body)
        while control.stop_reason is None:
            control.in_receive = True
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except BodyInterrupted:
                self.interrupted = True
                return
            except asyncio.CancelledError:
                # Control.stop() cuts a read blocked on a silent client; any other
                # cancellation is real and goes on up.
                if control.stop_reason is not None and task is not None and task.uncancel() == 0:
                    break
                raise
            finally:
                control.in_receive = False
            control.last_activity = time.monotonic()
            await self._take(chunk)
        # Stopped. A body that already brought every byte it announced, or every byte
        # the upload can still take, was not cut short: only its end was not yet read.
        self.interrupted = not self._body_complete()

    def _body_complete(self) -> bool:
        if self._content_length is not None and self.received == self._content_length:
            return True
        length = self.upload.length
        return length is not None and self.upload.offset + self.received == length

    async def _take(self, chunk: bytes) -> None:
        if self.upload.offset + self.received + len(chunk) > self._limit:
            raise Overflow
        view = memoryview(chunk)
        size = self._segment_size
        while view:
            n = min(size - self._fill, len(view))
            self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            self.received += n
            view = view[n:]
            if self._fill == size:
                await self._seal_full_segment()
        metrics.BYTES_IN_FLIGHT.inc(len(chunk))

    async def _seal_full_segment(self) -> None:
        index = self._segment
        end = (index + 1) * self._segment_size
        final = self.upload.length is not None and end == self.upload.length
        task = asyncio.create_task(
            self._write_record(index, final, self._buf, self._segment_size, self._new_from)
        )
        self._inflight.append(task)
        self._segment += 1
        self._buf = self._plain_pool.take()
        self._fill = 0
        self._new_from = 0
        self._next_piece = 0
        self._last_sealed_final = final
        while len(self._inflight) > self._depth:
            await self._settle_oldest()

    async def _write_record(
        self, index: int, final: bool, buf: bytearray, length: int, new_from: int
    ) -> RecordRow:
        async with self._seal_lock:  # the plaintext hashes must see the bytes in order
            record = await self._runner.io(self._seal, index, final, buf, length, new_from)
        if length == self._segment_size:
            self._plain_pool.give(buf)  # a full segment's buffer is no one else's now
        try:
            # Hashing and storing the record overlap with sealing the next one.
            return await self._runner.io(self._put_record, index, final, length, record)
        finally:
            self._record_pool.give(record)

    def _seal(
        self, index: int, final: bool, buf: bytearray, length: int, new_from: int
    ) -> bytearray:
        started = time.perf_counter()
        view = memoryview(buf)[:length]
        if self._client_hash is not None:
            self._client_hash.update(view[new_from:])
        running = self._running
        if running is not None and running.next_index == index:
            running.digest.update(view)
            running.next_index += 1
        else:
            self._running = None  # a gap: the hash is rebuilt from the records at the end
        if length == self._segment_size:
            record = self._record_pool.take()
        else:
            record = bytearray(length + RECORD_OVERHEAD)
        self._sealer.seal_record_into(index, final, view, record)
        metrics.SEAL_DURATION.observe(time.perf_counter() - started)
        metrics.BYTES_SEALED.inc(length)
        return record

    def _put_record(self, index: int, final: bool, length: int, record: bytearray) -> RecordRow:
        digest = hashlib.sha256(record).digest()
        header = self.upload.header
        if index == 0:
            chunks: tuple[bytes | bytearray, ...] = (header, record)
            part_digest = hashlib.sha256(header)
            part_digest.update(record)
            part_sha, size = part_digest.digest(), len(header) + len(record)
        else:
            chunks, part_sha, size = (record,), digest, len(record)
        assert self.upload.multipart_id is not None
        etag = self._store.put_part(
            data_key(self.upload.id),
            self.upload.multipart_id,
            index + 1,
            part_offset(len(header), self._segment_size, index),
            chunks,
            part_sha,
            fence=self._control.lease.token,
        )
        metrics.BYTES_STORED.inc(size)
        return RecordRow(index, length, final, size, digest, etag)

    async def _settle_oldest(self) -> None:
        try:
            row = await self._inflight.popleft()
        except Exception:
            metrics.SEAL_FAILURES.inc()
            raise
        self._pending.append(row)
        if self._progressive:
            await self._commit(offset=(row.index + 1) * self._segment_size)

    async def _commit(
        self, *, offset: int, piece: TailPiece | None = None, complete: bool = False
    ) -> None:
        rows, self._pending = self._pending, []
        drop = rows[-1].index + 1 if rows else None
        if complete:
            drop = self._segment + 1
        progress = Progress(
            expected_offset=self.committed,
            offset=offset,
            records=rows,
            add_piece=piece,
            drop_pieces_below=drop,
            complete_at=self._clock() if complete else None,
            expires_at=None if complete else self._expires_at(),
        )
        await self._runner.db(self._catalog.commit, self._control.lease, progress)
        metrics.BYTES_IN_FLIGHT.dec(offset - self.committed)
        self.committed = offset
        if drop is not None and self._old_pieces and self._old_pieces[0].segment < drop:
            old, self._old_pieces = self._old_pieces, []
            await self._runner.io(self._delete_pieces, old)

    def _delete_pieces(self, pieces: list[TailPiece]) -> None:
        for p in pieces:
            self._store.delete(tail_key(self.upload.id, p.segment, p.piece))

    # -- after the body -----------------------------------------------------------------

    async def drain(self) -> None:
        """Settle every segment in flight, in order; on failure wait for the rest."""
        try:
            while self._inflight:
                await self._settle_oldest()
        except BaseException:
            for task in self._inflight:
                with contextlib.suppress(BaseException):
                    await task
            self._inflight.clear()
            raise

    async def drain_quietly(self) -> None:
        """After a failure: let no part write outlive this request's lease."""
        with contextlib.suppress(Exception):
            await self.drain()

    async def finish(self) -> Outcome:
        await self.drain()
        # A stop only matters if it cut the body short: one that arrives after the body
        # ended (while its last segments are stored) finds every byte already here.
        stop = self._control.stop_reason if self.interrupted else None
        total = self.upload.offset + self.received
        if self._checksum is not None:
            if self.interrupted:
                return Outcome(self.committed, False, stop or "disconnected")
            async with self._seal_lock:
                await self._runner.io(self._hash_tail)
            assert self._client_hash is not None
            if self._client_hash.digest() != self._checksum.digest:
                metrics.CHECKSUM_MISMATCHES.inc()
                raise GatewayError(
                    ERR.CHECKSUM_MISMATCH,
                    f"the {self._checksum.algorithm} digest of the body does not match "
                    "Upload-Checksum; nothing was recorded",
                )
        length = self.upload.length
        if length is not None and total == length and not self.interrupted:
            await self._complete(total)
            return Outcome(total, True, stop)
        piece = None
        if self._fill > self._new_from:
            piece = TailPiece(
                self._segment, self._next_piece, self._new_from, self._fill - self._new_from
            )
            await self._runner.io(self._put_piece, piece)
        if piece is not None or self._pending or total != self.committed:
            await self._commit(offset=total, piece=piece)
        return Outcome(total, False, stop)

    def _hash_tail(self) -> None:
        assert self._client_hash is not None
        self._client_hash.update(memoryview(self._buf)[self._new_from : self._fill])

    def _put_piece(self, piece: TailPiece) -> None:
        plain = memoryview(self._buf)[piece.start : piece.start + piece.length]
        sealed = self._sealer.seal_tail(piece.segment, piece.piece, piece.start, plain)
        metrics.BYTES_SEALED.inc(piece.length)
        self._store.put(tail_key(self.upload.id, piece.segment, piece.piece), sealed)
        metrics.BYTES_STORED.inc(len(sealed))

    async def _complete(self, total: int) -> None:
        if self._final_recorded:
            pass  # a completion cut short by a crash: only the object is left to finish
        elif not (self._fill == 0 and self._last_sealed_final):
            # The final record: the last partial segment, or an empty record when the
            # upload ends on a boundary whose record was sealed before the end was known.
            row = await self._write_record(
                self._segment, True, self._buf, self._fill, self._new_from
            )
            self._pending.append(row)
        await self._commit(offset=total)
        rows = sorted(
            await self._runner.db(self._catalog.records, self.upload.id), key=lambda r: r.index
        )
        header_len = len(self.upload.header)
        parts = [
            PartRef(
                r.index + 1, part_offset(header_len, self._segment_size, r.index), r.size, r.etag
            )
            for r in rows
        ]
        whole = [r.index for r in rows] == list(range(len(rows)))
        if not rows or not whole or not rows[-1].final or any(r.final for r in rows[:-1]):
            raise _corrupt("the recorded records do not form a whole object")
        await self._runner.io(self._finish_object, parts)
        if self._on_complete is not None:
            running = self._running
            whole_hash = running is not None and running.next_index == len(rows)
            plain_sha = running.digest.digest() if running is not None and whole_hash else None
            await self._on_complete(self.upload, rows, plain_sha)
        await self._commit(offset=total, complete=True)
        self.completed = True

    def close(self) -> None:
        """Account for received bytes that will never be recorded (refused or cut off)."""
        metrics.BYTES_IN_FLIGHT.dec(self.upload.offset + self.received - self.committed)
        self.received = self.committed - self.upload.offset

    def running_hash(self) -> RunningHash | None:
        """The plaintext hash to carry to the next request, if it covers what is recorded."""
        running = self._running
        if self.completed or running is None:
            return None
        if running.next_index * self._segment_size > self.committed:
            return None  # it saw records that were never recorded (checksum, failure)
        return running

    def _finish_object(self, parts: list[PartRef]) -> None:
        assert self.upload.multipart_id is not None
        self._store.complete_multipart(data_key(self.upload.id), self.upload.multipart_id, parts)
        self._store.delete_prefix(tail_prefix(self.upload.id))


def _corrupt(what: str) -> GatewayError:
    return GatewayError(ERR.STORED_DATA_CORRUPT, f"stored data failed verification: {what}")
