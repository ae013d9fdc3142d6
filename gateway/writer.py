"""One PATCH body -> sealed records and tail pieces, sealed while the bytes arrive.

Each record is sealed as its plaintext comes in: the event loop hands the received
chunks over in slices of about 1 MiB, and two sealing threads take each batch side by
side, one hashing the plaintext, the other encrypting it with a streaming AES-GCM
encryptor and hashing the ciphertext; one record after the other (in order, under
`_seal_lock`). A store that writes in place (the folder) gets
each slice of ciphertext at once; for the others the record builds up in a buffer.
When a record's last byte arrives only its last slice and the tag remain, then the
part is made durable (`put_part`) while the next record is already being sealed; at
most `depth` records wait for that.

Records are recorded in the catalog in order, after their part is durable: at once
(progressive) or, when the PATCH carries Upload-Checksum, only after the digest of
the whole body verifies. A body that ends mid-segment leaves its new bytes as one
sealed tail piece, a new object; nothing is ever rewritten in place. The plaintext of
such an unfinished record is not kept: it is decrypted again from the ciphertext this
request wrote, after checking that ciphertext against the digest taken as it was
written. A short body whose Content-Length ends it inside its segment skips the record
altogether: its bytes are kept whole and sealed as the tail piece when it ends, so the
segment's earlier pieces are not read back until the PATCH that fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.buffers import Pools
from gateway.catalog.base import Progress, RecordRow, TailPiece, Upload, UploadCatalog
from gateway.checksums import SEALED_NAME, Hasher, header_value, new_hasher
from gateway.errors import ERR, GatewayError
from gateway.layout import data_key, tail_key, tail_prefix
from gateway.leases import Control, StopReason
from gateway.limits import ReceiveBudget
from gateway.runner import Runner
from gateway.sealed import NONCE_LEN, RECORD_OVERHEAD, TAG_LEN, InvalidSealedData, Sealer
from gateway.store.base import (
    ObjectStore,
    PartRef,
    StaleWrite,
    StoreUnavailable,
    writes_in_place,
)
from gateway.tus.headers import ChecksumHeader

SLICE = 1 << 20  # plaintext handed to the sealing thread at once, from a fast body
# A body starts with small slices and takes 1 MiB ones once it shows it is fast (a
# small slice filled within FAST_FILL of the one before); a large slice that takes
# SLOW_FILL sends it back to small ones. A partly filled slice whose client has been
# quiet for a poll of the lease's watcher is handed to sealing as it is (see
# Control.on_idle), so a stalled body holds no slice (nor budget).
SMALL_SLICE = 32 << 10
FAST_FILL = 0.01
SLOW_FILL = 0.1
QUEUED_LIMIT = 12 << 20  # plaintext one upload may have waiting before its reading pauses
# A body announced this short that ends inside its segment is kept whole and sealed as
# one tail piece at its end, instead of re-sealing the segment's earlier bytes with it.
TAIL_DIRECT = 2 << 20
_PIECE_NUMBERS = 1 << 32  # a tail piece's number is a u32 in its associated data


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
    stop_reason: StopReason | None  # why reading stopped early, if it did


# Plaintext on its way to the sealing threads: a view, whether it is new (from this
# body, not read back from tail pieces) and the pooled slice buffer it lives in.
Piece = tuple[memoryview, bool, bytearray | None]
Slice = list[Piece]
_CLOSE = "close"  # the record has all its bytes: seal its tag and store it
_CUT = "cut"  # the body ended first: stop after the bytes queued


@dataclass(eq=False)
class _Record:
    """One record being sealed as its plaintext arrives.

    The event loop fills `queue`; the record's task (`SegmentWriter._seal_record`)
    empties it, and only that task, running one worker call at a time, touches the
    sealing state below the line.
    """

    index: int
    final: bool
    length: int  # plaintext bytes the record holds when finished
    queue: asyncio.Queue[Slice | str] = field(default_factory=asyncio.Queue)
    queued: int = 0  # plaintext bytes in `queue`
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[RecordRow | None] | None = None
    error: BaseException | None = None
    finished: bool = False  # the task takes no more slices
    discard: bool = False  # cut by a failure: skip what is still queued
    # -- sealing state --
    nonce: bytes = b""
    encryptor: Any = None
    done: int = 0  # plaintext bytes sealed so far
    record_hash: Any = None  # SHA-256 of the record's bytes so far (nonce || ciphertext)
    part_hash: Any = None  # the same with HEADER in front, for part 1
    plain_hash: Any = None  # the running plaintext hash carried on through this record
    buffer: bytearray | None = None  # the whole record, for stores that take parts whole
    tag: bytes = b""
    busy: float = 0.0  # worker seconds spent sealing
    hashing: float = 0.0  # worker seconds spent on the plaintext hashes, beside that


class SegmentWriter:
    def __init__(
        self,
        *,
        upload: Upload,
        sealer: Sealer,
        store: ObjectStore,
        catalog: UploadCatalog,
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
        slices: ReceiveBudget | None = None,
        merge_after: int = 64,
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
        self._in_place = store if writes_in_place(store) else None
        self._catalog = catalog
        self._runner = runner
        self._control = control
        self._checksum = checksum
        self._client_hash: Hasher | None = new_hasher(checksum.algorithm) if checksum else None
        # With a checksum nothing may be recorded before the whole body verifies.
        self._progressive = checksum is None
        self._whole_checksum: bytes | None = None  # sealed, once verified over the whole upload
        self._limit = limit  # the upload's length, or the max size while it is deferred
        self._depth = depth
        self._expires_at = expires_at
        self._clock = clock
        self._seal_lock = asyncio.Lock()
        self._inflight: deque[asyncio.Task[RecordRow | None]] = deque()
        self._pending: list[RecordRow] = []
        # Records are settled (recorded) in order by one coroutine at a time: the body's
        # path when the pipeline is full or at the end, or `_recorder` as soon as the
        # oldest record is stored. After a failure nothing more is settled.
        self._settling = asyncio.Lock()
        self._recorder: asyncio.Task[None] | None = None
        self._settle_failed: BaseException | None = None
        self._segment_size = upload.segment_size
        self._key = data_key(upload.id)
        self._segment = upload.offset // self._segment_size
        self._fill = upload.offset % self._segment_size
        self._new_from = self._fill  # bytes before this came from earlier requests
        self._preload: bytearray | None = None  # those bytes, read back from tail pieces
        # A body that ends inside its segment (its length says so): its bytes (the
        # first `received` of them), kept for one tail piece, and the units of the
        # shared budget they are counted in.
        self._tail: bytearray | None = None
        self._tail_units = 0
        self._open: _Record | None = None  # the record the next bytes go to
        self._cut: _Record | None = None  # the unfinished record, once the body ended
        pools = pools if pools is not None else Pools(keep=0)
        # Enough idle slices for one upload's whole queue, so a steady upload reuses them.
        self._pools = pools
        self._pools.for_size(SLICE, keep=QUEUED_LIMIT // SLICE + 4)
        self._pools.for_size(SMALL_SLICE, keep=256)
        # Bytes of slices in existence, shared by all uploads: bounds memory.
        if slices is None:
            slices = ReceiveBudget(QUEUED_LIMIT + 2 * SLICE)
        self._budget = slices
        self._slice: bytearray | None = None  # received bytes are gathered here
        self._slice_fill = 0
        self._slice_size = SMALL_SLICE  # the size of the next slice taken
        self._slice_started = time.monotonic()  # when the slice before was filled
        self._record_pool = pools.for_size(self._segment_size + RECORD_OVERHEAD)
        self._next_piece = 0
        self._old_pieces: list[TailPiece] = []
        self._merge_after = merge_after  # tail pieces a segment may have; beyond, merge
        self._last_sealed_final = False
        self._final_recorded = False
        self.received = 0
        self.committed = upload.offset
        self.interrupted = False  # the body ended early (client gone, stopped)

    # -- before the body ----------------------------------------------------------------

    async def prepare(self, pieces: list[TailPiece]) -> None:
        """Read the unfinished segment's tail pieces back, to go in front of the new bytes.

        `pieces`: the upload's tail pieces as the catalog has them, read with the lease.
        """
        upload = self.upload
        if upload.length is not None and upload.offset == upload.length:
            rows = await self._runner.db(self._catalog.records, upload.id)
            if any(r.final for r in rows):
                self._final_recorded = True
                return
        pieces = sorted((p for p in pieces if p.segment == self._segment), key=lambda p: p.start)
        self._old_pieces = pieces
        self._next_piece = self._piece_number(pieces)
        if await self._keep_as_tail():
            return  # the segment's earlier bytes are not needed: it does not fill now
        if pieces or self._fill:
            self._preload = await self._runner.io(self._load_pieces, pieces)

    def _piece_number(self, recorded: list[TailPiece]) -> int:
        """The number of the tail piece this request may write: its lease's token.

        Tokens are unique, so two requests never write the same piece object: a writer
        that lost its lease while paused (a process stopped longer than the takeover
        time, say) and stores its piece late puts it beside the new holder's, never
        over a recorded one. It is never recorded (its commit fails) and goes with
        the upload's other leftovers. Pieces are ordered by where they start.
        """
        number = self._control.lease.token % _PIECE_NUMBERS
        taken = {p.piece for p in recorded}
        while number in taken:  # only after 2**32 leases, or pieces numbered 0, 1, 2...
            number = (number + 1) % _PIECE_NUMBERS
        return number

    async def _keep_as_tail(self) -> bool:
        """Whether this body becomes one tail piece, sealed when it ends.

        So it is when its announced length ends it inside the segment it starts in, it
        is short (TAIL_DIRECT) and the shared budget has room for it right now (never
        waited for: a body kept whole holds its share until it ends). Each of a mobile
        client's small chunks then costs sealing its own bytes, not the segment's.
        """
        size = self._content_length
        if size is None or not 0 < size <= TAIL_DIRECT:
            return False
        end = (self._segment + 1) * self._segment_size
        if self.upload.length is not None:
            end = min(end, self.upload.length)
        if self.upload.offset + size >= end:
            return False
        # Held until the body ends, however slowly it comes: never more than half
        # of the budget for such bodies together.
        budget = self._budget
        if budget.free - size < budget.total // 2 or not budget.try_take(size):
            return False
        self._tail, self._tail_units = bytearray(size), size  # one allocation, filled
        return True

    def _load_pieces(self, pieces: list[TailPiece], covers: int | None = None) -> bytearray:
        plain = bytearray()
        for piece in pieces:
            blob = self._store.get(tail_key(self.upload.id, piece.segment, piece.piece))
            try:
                opened = self._sealer.open_tail(piece.segment, piece.piece, piece.start, blob)
            except InvalidSealedData as exc:
                raise _corrupt(f"tail piece {piece.segment}/{piece.piece}") from exc
            if piece.start != len(plain) or len(opened) != piece.length:
                raise _corrupt(f"tail piece {piece.segment}/{piece.piece} is out of place")
            plain += opened
        if len(plain) != (self._fill if covers is None else covers):
            raise _corrupt("tail pieces do not cover the recorded offset")
        return plain

    # -- the body -----------------------------------------------------------------------

    async def receive(self, body: AsyncIterator[bytes]) -> None:
        control = self._control
        control.on_idle = self._flush_idle
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
                control.waited += control.last_activity - control.read_started
            control.received += len(chunk)
            await self._take(chunk)
        # Stopped. A body that already brought every byte it announced, or every byte
        # the upload can still take, was not cut short: only its end was not yet read.
        self.interrupted = not self._body_complete()

    def _flush_idle(self) -> None:
        """The client is slow to send more: hand the partly filled slice to sealing, so
        it (and its share of the budget) comes back while the read waits.

        Called on the event loop only while `receive` waits for the next chunk."""
        if self._slice is not None and self._slice_fill and self._open is not None:
            self._slice_size = SMALL_SLICE
            self._slice_started = time.monotonic()
            self._hand_slice(self._open)

    def _body_complete(self) -> bool:
        if self._content_length is not None and self.received == self._content_length:
            return True
        length = self.upload.length
        return length is not None and self.upload.offset + self.received == length

    async def _take(self, chunk: bytes) -> None:
        if self.upload.offset + self.received + len(chunk) > self._limit:
            raise Overflow
        if self._tail is not None:
            at = self.received
            if at + len(chunk) > len(self._tail):
                raise Overflow  # never past its Content-Length (HTTP framing sees to it)
            self._tail[at : at + len(chunk)] = chunk
            self._fill += len(chunk)
            self.received += len(chunk)
            metrics.BYTES_IN_FLIGHT.inc(len(chunk))
            return
        view = memoryview(chunk)
        while view:
            record = self._open if self._open is not None else self._start_record()
            if self._slice is None:
                await self._take_slice()
                assert self._slice is not None
            # Gathered into slices (1 MiB ones when fast), the bytes cost the sealing
            # threads a few large calls instead of many small ones that would each
            # contend for the GIL.
            size = len(self._slice)
            n = min(record.length - self._fill, len(view), size - self._slice_fill)
            self._slice[self._slice_fill : self._slice_fill + n] = view[:n]
            self._slice_fill += n
            self._fill += n
            self.received += n
            view = view[n:]
            if self._slice_fill == size:
                self._pace(size)
            if self._fill == record.length:
                await self._close_record()
            elif self._slice_fill == size:
                await self._feed(record)
        metrics.BYTES_IN_FLIGHT.inc(len(chunk))

    async def _take_slice(self) -> None:
        size = self._slice_size
        await self._budget.take(size)
        self._slice, self._slice_fill = self._pools.for_size(size).take(), 0

    def _pace(self, size: int) -> None:
        """A slice filled: choose the size of the next from how fast this one did.

        Timed from when the slice before it filled, not from its own first byte: one
        chunk of a slow client can fill a small slice at once."""
        now = time.monotonic()
        took, self._slice_started = now - self._slice_started, now
        if size == SMALL_SLICE and took <= FAST_FILL:
            self._slice_size = SLICE
        elif size == SLICE and took >= SLOW_FILL:
            self._slice_size = SMALL_SLICE

    def _start_record(self) -> _Record:
        """Open the current segment's record; what it holds follows from the length."""
        index = self._segment
        start = index * self._segment_size
        length, final = self._segment_size, False
        if self.upload.length is not None:
            length = min(self._segment_size, self.upload.length - start)
            final = start + length == self.upload.length
        record = _Record(index, final, length)
        record.task = asyncio.create_task(self._seal_record(record))
        self._open = record
        if self._preload:
            self._hand(record, (memoryview(self._preload), False, None))
        self._preload = None
        return record

    def _hand(self, record: _Record, piece: Piece) -> None:
        if record.finished:  # it failed: nothing more will be sealed
            self._return_slices(record, [piece], queued=False)
            return
        record.queued += len(piece[0])
        record.queue.put_nowait([piece])

    def _return_slices(self, record: _Record, slices: Slice, *, queued: bool = True) -> None:
        if queued:
            record.queued -= sum(len(view) for view, _, _ in slices)
        for _, _, buffer in slices:
            if buffer is not None:
                self._give_slice(buffer)

    def _hand_slice(self, record: _Record) -> None:
        if self._slice is not None:
            if self._slice_fill:
                view = memoryview(self._slice)[: self._slice_fill]
                self._hand(record, (view, True, self._slice))
            else:
                self._give_slice(self._slice)
            self._slice = None

    def _give_slice(self, buffer: bytearray) -> None:
        self._pools.for_size(len(buffer)).give(buffer)
        self._budget.give(len(buffer))

    async def _feed(self, record: _Record) -> None:
        """Hand the slice to the record's task; wait while too much is queued."""
        self._hand_slice(record)
        while record.queued > QUEUED_LIMIT and record.error is None:
            record.room.clear()
            await record.room.wait()
        if record.error is not None:
            raise record.error

    async def _close_record(self) -> None:
        record = self._open
        assert record is not None
        await self._feed(record)
        record.queue.put_nowait(_CLOSE)
        assert record.task is not None
        self._inflight.append(record.task)
        if self._progressive:
            record.task.add_done_callback(self._stored)
        self._open = None
        self._segment += 1
        self._fill = 0
        self._new_from = 0
        self._next_piece = self._piece_number([])
        self._last_sealed_final = record.final
        # No byte can follow a final record: the body's end need not wait for storage.
        if not record.final:
            await self._settle(keep=self._depth)

    def _cut_open_record(self, *, discard: bool) -> None:
        """The body ended before the open record filled: stop its task."""
        record = self._open
        if record is None:
            return
        self._open = None
        if discard:
            record.discard = True
        self._hand_slice(record)
        record.queue.put_nowait(_CUT)
        self._cut = record

    # -- sealing, in worker threads -----------------------------------------------------

    async def _seal_record(self, record: _Record) -> RecordRow | None:
        runner = self._runner
        try:
            async with self._seal_lock:  # the plaintext hashes must see the bytes in order
                if not record.discard:
                    await runner.seal(self._begin, record)
                while True:
                    item = await record.queue.get()
                    slices: Slice = []
                    while not isinstance(item, str):
                        slices.extend(item)
                        if record.queue.empty():
                            item = ""
                            break
                        item = record.queue.get_nowait()
                    if slices:
                        try:
                            if not record.discard:
                                # Hashing the plaintext and sealing run side by side.
                                # Both finish before the slices go back to the pool,
                                # even when one fails.
                                done = await asyncio.gather(
                                    runner.seal(self._hash_plain, record, slices),
                                    runner.seal(self._absorb, record, slices),
                                    return_exceptions=True,
                                )
                                for outcome in done:
                                    if isinstance(outcome, BaseException):
                                        raise outcome
                        finally:
                            self._return_slices(record, slices)
                        record.room.set()
                    if item == _CUT:
                        return None
                    if item == _CLOSE:
                        break
                await runner.seal(self._end, record)
        except BaseException as exc:
            record.error = exc
            self._release(record)
            if record.discard and isinstance(exc, Exception):
                return None  # no one waits for a discarded record
            raise
        finally:
            # Whatever is still queued, or handed over from now on, goes straight back
            # to the pool: the shared budget must get every slice back.
            record.finished = True
            record.room.set()
            while not record.queue.empty():
                left = record.queue.get_nowait()
                if not isinstance(left, str):
                    self._return_slices(record, left)
        try:
            # Storing the record overlaps with sealing the next one.
            return await runner.io(self._put_record, record)
        finally:
            self._release(record)

    def _release(self, record: _Record) -> None:
        if record.buffer is not None:
            self._record_pool.give(record.buffer)
            record.buffer = None

    def _begin(self, record: _Record) -> None:
        started = time.perf_counter()
        index = record.index
        record.nonce, record.encryptor = self._sealer.record_encryptor(
            index, record.final, record.length
        )
        record.record_hash = hashlib.sha256(record.nonce)
        header = self.upload.header
        if index == 0:
            record.part_hash = hashlib.sha256(header)
            record.part_hash.update(record.nonce)
        running = self._running
        if running is not None and running.next_index == index:
            record.plain_hash = running.digest.copy()
        else:
            self._running = None  # a gap: the hash is rebuilt from the records at the end
        if self._in_place is not None:
            lead = (header, record.nonce) if index == 0 else (record.nonce,)
            self._write_span(self._part_offset(index), lead)
        else:
            size = record.length + RECORD_OVERHEAD
            full = record.length == self._segment_size
            record.buffer = self._record_pool.take() if full else bytearray(size)
            record.buffer[:NONCE_LEN] = record.nonce
        record.busy += time.perf_counter() - started

    def _hash_plain(self, record: _Record, slices: Slice) -> None:
        started = time.perf_counter()
        client_hash = self._client_hash
        for view, new, _ in slices:
            if new and client_hash is not None:
                client_hash.update(view)
            if record.plain_hash is not None:
                record.plain_hash.update(view)
        record.hashing += time.perf_counter() - started

    def _absorb(self, record: _Record, slices: Slice) -> None:
        """Encrypt, hash the ciphertext and store it (beside `_hash_plain`)."""
        started = time.perf_counter()
        if record.buffer is not None:
            out = memoryview(record.buffer)
            for view, _, _ in slices:
                at = NONCE_LEN + record.done
                self._encrypt(record, view, out[at : at + len(view) + TAG_LEN])
        else:
            self._absorb_in_place(record, slices)
        metrics.BYTES_SEALED.inc(sum(len(view) for view, _, _ in slices))
        record.busy += time.perf_counter() - started

    def _absorb_in_place(self, record: _Record, slices: Slice) -> None:
        """Encrypt into scratch space, SLICE bytes at a time, and write each slice out."""
        out = memoryview(_scratch())
        lead = self._part_offset(record.index) + NONCE_LEN
        if record.index == 0:
            lead += len(self.upload.header)
        filled, start = 0, record.done
        for whole, _, _ in slices:
            view = whole
            while view:
                n = min(SLICE - filled, len(view))
                self._encrypt(record, view[:n], out[filled : filled + n + TAG_LEN])
                filled += n
                view = view[n:]
                if filled == SLICE:
                    self._write_span(lead + start, (out[:filled],))
                    start, filled = start + filled, 0
        if filled:
            self._write_span(lead + start, (out[:filled],))

    def _encrypt(self, record: _Record, plain: memoryview, out: memoryview) -> None:
        n = record.encryptor.update_into(plain, out)
        if n != len(plain):
            raise RuntimeError("AES-GCM held back ciphertext")  # a stream mode never does
        cipher = out[:n]
        record.record_hash.update(cipher)
        if record.part_hash is not None:
            record.part_hash.update(cipher)
        record.done += n

    def _end(self, record: _Record) -> None:
        started = time.perf_counter()
        if record.done != record.length:
            raise RuntimeError(f"record {record.index}: {record.done} of {record.length} bytes")
        record.encryptor.finalize()
        record.tag = record.encryptor.tag
        record.record_hash.update(record.tag)
        if record.part_hash is not None:
            record.part_hash.update(record.tag)
        if record.buffer is not None:
            at = NONCE_LEN + record.length
            record.buffer[at : at + TAG_LEN] = record.tag
        if record.plain_hash is not None and self._running is not None:
            self._running.digest = record.plain_hash
            self._running.next_index += 1
        record.busy += time.perf_counter() - started
        metrics.SEAL_DURATION.observe(record.busy + record.hashing)

    def _put_record(self, record: _Record) -> RecordRow:
        index, length = record.index, record.length
        header = self.upload.header
        size = length + RECORD_OVERHEAD + (len(header) if index == 0 else 0)
        digest = record.record_hash.digest()
        part_sha = record.part_hash.digest() if record.part_hash is not None else digest
        if record.buffer is not None:
            sealed = memoryview(record.buffer)[: length + RECORD_OVERHEAD]
            chunks: tuple[bytes | memoryview, ...] = (header, sealed) if index == 0 else (sealed,)
            written = 0
        else:
            chunks, written = (record.tag,), size - TAG_LEN
        assert self.upload.multipart_id is not None
        etag = self._store.put_part(
            self._key,
            self.upload.multipart_id,
            index + 1,
            self._part_offset(index),
            chunks,
            part_sha,
            fence=self._control.lease.token,
            written=written,
        )
        metrics.BYTES_STORED.inc(size)
        return RecordRow(index, length, record.final, size, digest, etag)

    def _part_offset(self, index: int) -> int:
        return part_offset(len(self.upload.header), self._segment_size, index)

    def _write_span(self, offset: int, chunks: tuple[Any, ...]) -> None:
        assert self.upload.multipart_id is not None
        assert self._in_place is not None
        self._in_place.write_span(
            self._key, self.upload.multipart_id, offset, chunks, fence=self._control.lease.token
        )

    def _recover(self, record: _Record) -> bytes:
        """The plaintext an unfinished record has sealed, from the ciphertext written."""
        if record.buffer is not None:
            cipher = memoryview(record.buffer)[NONCE_LEN : NONCE_LEN + record.done]
        else:
            assert self.upload.multipart_id is not None
            start = self._part_offset(record.index)
            if record.index == 0:
                start += len(self.upload.header)
            size = NONCE_LEN + record.done
            assert self._in_place is not None
            written = self._in_place.read_span(self._key, self.upload.multipart_id, start, size)
            if len(written) != size or hashlib.sha256(written).digest() != (
                record.record_hash.digest()
            ):
                # Only a newer writer can have written there since: this request lost.
                raise StaleWrite(f"record {record.index} was overwritten before it was finished")
            cipher = memoryview(written)[NONCE_LEN:]
        return self._sealer.record_keystream(record.nonce).update(cipher)

    # -- recording ----------------------------------------------------------------------

    def _stored(self, task: asyncio.Task[RecordRow | None]) -> None:
        """A record's task ended: record it now if every earlier one is (progressive)."""
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_stored())

    async def _record_stored(self) -> None:
        """Record the stored records at the front of the pipeline, in order, at once.

        So HEAD follows what is durable record by record while the body goes on, not
        only once the pipeline is full. A record that failed is left for the body's
        path to find; a failure here is kept for it too.
        """
        async with self._settling:
            try:
                while (
                    self._settle_failed is None and self._inflight and _stored_ok(self._inflight[0])
                ):
                    await self._settle_oldest()
            except Exception as exc:
                self._settle_failed = exc

    async def _settle(self, keep: int = 0) -> None:
        """Settle records in order until at most `keep` are in flight."""
        async with self._settling:
            if self._settle_failed is not None:
                raise self._settle_failed
            try:
                while len(self._inflight) > keep:
                    await self._settle_oldest()
            except BaseException as exc:
                self._settle_failed = exc
                raise

    async def _settle_oldest(self) -> None:
        try:
            row = await self._inflight.popleft()
        except Exception:
            metrics.SEAL_FAILURES.inc()
            raise
        assert row is not None
        self._pending.append(row)
        if self._progressive:
            await self._commit(offset=row.index * self._segment_size + row.plaintext_len)

    async def _commit(
        self,
        *,
        offset: int,
        piece: TailPiece | None = None,
        complete: bool = False,
        replaces: list[TailPiece] | None = None,
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
            drop_pieces=replaces or (),
            drop_pieces_below=drop,
            complete_at=self._clock() if complete else None,
            expires_at=None if complete else self._expires_at(),
            checksum=self._whole_checksum,
        )
        await self._runner.db(self._catalog.commit, self._control.lease, progress)
        metrics.BYTES_IN_FLIGHT.dec(offset - self.committed)
        self.committed = offset
        if replaces or (
            drop is not None and self._old_pieces and self._old_pieces[0].segment < drop
        ):
            old, self._old_pieces = self._old_pieces, []
            await self._runner.io(self._delete_pieces, old)

    def _delete_pieces(self, pieces: list[TailPiece]) -> None:
        for p in pieces:
            self._store.delete(tail_key(self.upload.id, p.segment, p.piece))

    # -- after the body -----------------------------------------------------------------

    async def drain(self) -> None:
        """Settle every record in flight, in order; on failure wait for the rest.

        An unfinished record is cut: its task seals what it was given and stops.
        """
        self._cut_open_record(discard=False)
        try:
            await self._settle()
            await self._recorder_done()
            if self._cut is not None and self._cut.task is not None:
                await self._cut.task
        except BaseException as exc:
            if self._settle_failed is None:
                self._settle_failed = exc  # record nothing more
            with contextlib.suppress(BaseException):
                await self._recorder_done()
            self._cut_open_record(discard=True)
            if self._cut is not None:
                self._cut.discard = True
            for task in self._inflight:
                with contextlib.suppress(BaseException):
                    await task
            self._inflight.clear()
            if self._cut is not None and self._cut.task is not None:
                with contextlib.suppress(BaseException):
                    await self._cut.task
            raise

    async def _recorder_done(self) -> None:
        if self._recorder is not None:
            await self._recorder

    async def drain_quietly(self) -> None:
        """After a failure: let no part write outlive this request's lease."""
        self._cut_open_record(discard=True)
        if self._cut is not None:
            self._cut.discard = True
        with contextlib.suppress(Exception):
            await self.drain()

    async def finish(self) -> Outcome:
        await self.drain()
        # A stop only matters if it cut the body short: one that arrives after the body
        # ended (while its last records are stored) finds every byte already here.
        stop = self._control.stop_reason if self.interrupted else None
        total = self.upload.offset + self.received
        if self._checksum is not None:
            if self.interrupted:
                await self.scrub()
                return Outcome(self.committed, False, stop or StopReason.DISCONNECTED)
            assert self._client_hash is not None
            if self._tail is not None:
                kept = memoryview(self._tail)[: self.received]
                await self._runner.seal(self._client_hash.update, kept)
            if self._client_hash.digest() != self._checksum.digest:
                metrics.CHECKSUM_MISMATCHES.inc()
                await self.scrub()
                raise GatewayError(
                    ERR.CHECKSUM_MISMATCH,
                    f"the {self._checksum.algorithm} digest of the body does not match "
                    "Upload-Checksum; nothing was recorded",
                )
            if self.upload.offset == 0 and total == self.upload.length:
                # This body is the whole upload: its checksum is the upload's (MANIFEST.md).
                value = header_value(self._checksum.algorithm, self._checksum.digest)
                self._whole_checksum = self._sealer.seal_value(SEALED_NAME, value.encode())
        length = self.upload.length
        if length is not None and total == length and not self.interrupted:
            await self._complete(total)
            return Outcome(total, True, stop)
        piece, merged = None, []
        if self._fill > self._new_from:
            start = self._new_from
            if self._new_from and len(self._old_pieces) >= self._merge_after:
                # One piece more would pass the count: this one covers the segment's
                # earlier pieces too, and replaces them in the same catalog commit.
                start, merged = 0, self._old_pieces
                metrics.TAIL_MERGES.inc()
            piece = TailPiece(self._segment, self._next_piece, start, self._fill - start)
            await self._runner.io(self._put_piece, piece)
        if piece is not None or self._pending or total != self.committed:
            await self._commit(offset=total, piece=piece, replaces=merged)
        return Outcome(total, False, stop)

    async def scrub(self) -> None:
        """Drop the records a refused body stored but that will never be recorded.

        They are valid sealings under the upload's key. A store that writes in place
        keeps them in the unfinished object, past what the catalog records: cut it
        there (fenced: a newer writer's bytes are never touched). S3 needs nothing:
        completion assembles only the parts the catalog recorded.
        """
        store, length = self._in_place, self.upload.length
        if store is None or (length is not None and self.committed >= length):
            return
        assert self.upload.multipart_id is not None
        end = self._part_offset(self.committed // self._segment_size)
        with contextlib.suppress(StoreUnavailable):
            await self._runner.io(
                store.discard_from,
                self._key,
                self.upload.multipart_id,
                end,
                fence=self._control.lease.token,
            )

    def _put_piece(self, piece: TailPiece) -> None:
        plain: bytes | memoryview
        if self._tail is not None:
            plain = memoryview(self._tail)[: self.received]
            if piece.start < self._new_from:  # merged: the earlier pieces' bytes in front
                earlier = self._load_pieces(self._old_pieces, covers=self._new_from)
                plain = bytes(earlier + plain)
        else:
            record = self._cut
            assert record is not None and record.done == self._fill
            plain = self._recover(record)[piece.start : piece.start + piece.length]
        sealed = self._sealer.seal_tail(piece.segment, piece.piece, piece.start, plain)
        metrics.BYTES_SEALED.inc(piece.length)
        # Fresh: a piece's number is its request's own (see _piece_number).
        self._store.put(tail_key(self.upload.id, piece.segment, piece.piece), sealed, fresh=True)
        metrics.BYTES_STORED.inc(len(sealed))

    async def _complete(self, total: int) -> None:
        if not self._final_recorded and not (self._fill == 0 and self._last_sealed_final):
            # The final record: the segment's bytes from earlier requests, or an empty
            # record when the upload ends on a boundary whose record was sealed before
            # the end was known.
            if self._open is None:
                self._start_record()
            await self._close_record()
            await self.drain()
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
        self._cut_open_record(discard=True)
        self._tail = None
        self._budget.give(self._tail_units)
        self._tail_units = 0
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
        self._store.complete_multipart(self._key, self.upload.multipart_id, parts)
        self._store.delete_prefix(tail_prefix(self.upload.id))


_thread_scratch = threading.local()


def _scratch() -> bytearray:
    """This worker thread's space for ciphertext on its way to an in-place store.

    Used only within one call, so one per thread (not per upload) is enough.
    """
    buffer: bytearray | None = getattr(_thread_scratch, "buffer", None)
    if buffer is None:
        buffer = _thread_scratch.buffer = bytearray(SLICE + TAG_LEN)
    return buffer


def _stored_ok(task: asyncio.Task[RecordRow | None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _corrupt(what: str) -> GatewayError:
    return GatewayError(ERR.STORED_DATA_CORRUPT, f"stored data failed verification: {what}")
