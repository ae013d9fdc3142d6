"""The sealing pipeline: each record's task seals its plaintext as it arrives, then stores it.

Two sealing threads take each batch side by side, one hashing the plaintext, the
other encrypting it (`RecordStream`) and hashing the ciphertext; one record after the
other, in order. A store that writes in place gets each slice of ciphertext at once;
for the others the record builds up in a buffer. Storing a record overlaps with
sealing the next.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway import metrics
from gateway.buffers import Pools
from gateway.catalog.base import RecordRow, Upload
from gateway.checksums import Hasher
from gateway.layout import data_key
from gateway.runner import Runner
from gateway.sealed import NONCE_LEN, RECORD_OVERHEAD, TAG_LEN, Sealer
from gateway.store.base import ObjectStore, StaleWrite, writes_in_place
from gateway.writer.base import Batch, Fragment, RunningHash, part_offset
from gateway.writer.receive import QUEUED_LIMIT, SLICE
from gateway.writer.record import Record, Signal

T = TypeVar("T")


class SealingPipeline:
    """Seals and stores the records of one request, in order."""

    def __init__(
        self,
        *,
        upload: Upload,
        sealer: Sealer,
        store: ObjectStore,
        runner: Runner,
        fence: Callable[[], int],
        pools: Pools,
        give_back: Callable[[Batch, bool], None],
        client_hash: Hasher | None,
        running: RunningHash | None,
    ) -> None:
        self._upload = upload
        self._header = upload.header
        self._sealer = sealer
        self._store = store
        self._in_place = store if writes_in_place(store) else None
        self._runner = runner
        self._fence = fence  # the request's lease token, for every part write
        # Slices the task is done with; True: a worker thread may still read them.
        self._give_back = give_back
        self._client_hash = client_hash
        # The plaintext hash carried on from earlier requests; None after a gap.
        self.running = running
        self._key = data_key(upload.id)
        self._segment_size = upload.segment_size
        self._record_pool = pools.for_size(self._segment_size + RECORD_OVERHEAD)
        self._sized = pools.sized
        self._slice_pool = pools.for_size(SLICE)  # reading back a cut record
        self._lock = asyncio.Lock()  # the plaintext hashes must see the bytes in order

    # -- on the event loop --------------------------------------------------------------

    def start(self, index: int, final: bool, length: int) -> Record:
        record = Record(index, final, length)
        record.task = asyncio.create_task(self.seal(record))
        return record

    def hand(self, record: Record, fragment: Fragment) -> None:
        if record.finished:  # it failed: nothing more will be sealed
            self._give_back([fragment], False)
            return
        record.queued += len(fragment[0])
        record.queue.put_nowait([fragment])

    async def wait_for_room(self, record: Record) -> None:
        """Wait while too much of the record is queued; raise its failure, if any."""
        while record.queued > QUEUED_LIMIT and record.error is None:
            record.room.clear()
            await record.room.wait()
        if record.error is not None:
            raise record.error

    def signal(self, record: Record, signal: Signal) -> None:
        record.queue.put_nowait(signal)

    def _return(self, record: Record, batch: Batch) -> None:
        record.queued -= sum(len(view) for view, _, _ in batch)
        self._give_back(batch, record.lent)

    async def seal(self, record: Record) -> RecordRow | None:
        """The record's task: seal what is queued until CLOSE (then store it) or CUT."""
        runner = self._runner
        try:
            async with self._lock:
                if not record.discard:
                    await _lending(record, runner.seal(self.begin, record))
                while True:
                    batch, signal = await _next_batch(record)
                    if batch:
                        try:
                            if not record.discard:
                                await _lending(record, self._seal_batch(record, batch))
                        finally:
                            self._return(record, batch)
                            # Back in their pools: no view of them may be held while
                            # this task waits for the next bytes, which for a slow
                            # client can be seconds (a pool keeps only so many idle
                            # buffers and drops the rest, which such a view kept alive).
                            batch.clear()
                        record.room.set()
                    if signal is Signal.CUT:
                        return None
                    if signal is Signal.CLOSE:
                        break
                await _lending(record, runner.seal(self.end, record))
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
                if not isinstance(left, Signal):
                    self._return(record, left)
        try:
            return await _lending(record, runner.io(self.put_record, record))
        finally:
            self._release(record)

    async def _seal_batch(self, record: Record, batch: Batch) -> None:
        """Hash the plaintext and seal it, side by side. Both finish before the batch's
        buffers go back to their pools, even when one fails."""
        done = await asyncio.gather(
            self._runner.seal_soon(self.hash_plain, record, batch),
            self._runner.seal_soon(self.absorb, record, batch),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome

    def _release(self, record: Record) -> None:
        if record.buffer is not None and not record.lent:
            self._record_pool.give(record.buffer)
        record.buffer = None

    # -- in worker threads --------------------------------------------------------------

    def begin(self, record: Record) -> None:
        started = time.perf_counter()
        index = record.index
        stream = self._sealer.record_stream(index, record.final, record.length)
        record.begin(stream, self._header if index == 0 else None, self._sealer.suite)
        running = self.running
        if running is not None and running.next_index == index:
            record.plain_hash = running.digest.copy()
        else:
            self.running = None  # a gap: the hash is rebuilt from the records at the end
        if self._in_place is not None:
            lead = (self._header, stream.nonce) if index == 0 else (stream.nonce,)
            self._write_span(self.part_offset(index), lead)
        else:
            full = record.length == self._segment_size
            size = record.length + RECORD_OVERHEAD
            record.buffer = self._record_pool.take() if full else bytearray(size)
            record.buffer[:NONCE_LEN] = stream.nonce
        record.busy += time.perf_counter() - started

    def hash_plain(self, record: Record, batch: Batch) -> None:
        """The plaintext hashes: the client's checksum (new bytes) and the running one."""
        started = time.perf_counter()
        client_hash = self._client_hash
        for view, new, _ in batch:
            if new and client_hash is not None:
                client_hash.update(view)
            if record.plain_hash is not None:
                record.plain_hash.update(view)
        record.hashing += time.perf_counter() - started

    def absorb(self, record: Record, batch: Batch) -> None:
        """Encrypt, hash the ciphertext and store it (beside `hash_plain`)."""
        started = time.perf_counter()
        if record.buffer is not None:
            out = memoryview(record.buffer)
            for view, _, _ in batch:
                at = NONCE_LEN + record.done
                record.encrypt(view, out[at : at + len(view) + TAG_LEN])
        else:
            self._absorb_in_place(record, batch)
        metrics.BYTES_SEALED.inc(sum(len(view) for view, _, _ in batch))
        record.busy += time.perf_counter() - started

    def _absorb_in_place(self, record: Record, batch: Batch) -> None:
        """Encrypt into scratch space, SLICE bytes at a time, and write each slice out."""
        out = memoryview(_scratch())
        lead = self._cipher_offset(record.index)
        filled, start = 0, record.done
        for whole, _, _ in batch:
            view = whole
            while view:
                n = min(SLICE - filled, len(view))
                record.encrypt(view[:n], out[filled : filled + n + TAG_LEN])
                filled += n
                view = view[n:]
                if filled == SLICE:
                    self._write_span(lead + start, (out[:filled],))
                    start, filled = start + filled, 0
        if filled:
            self._write_span(lead + start, (out[:filled],))

    def end(self, record: Record) -> None:
        started = time.perf_counter()
        tag = record.end()
        if record.buffer is not None:
            at = NONCE_LEN + record.length
            record.buffer[at : at + TAG_LEN] = tag
        if record.plain_hash is not None and self.running is not None:
            self.running.digest = record.plain_hash
            self.running.next_index += 1
        record.busy += time.perf_counter() - started
        metrics.SEAL_DURATION.observe(record.busy + record.hashing)

    def put_record(self, record: Record) -> RecordRow:
        index, length = record.index, record.length
        size = length + RECORD_OVERHEAD + (len(self._header) if index == 0 else 0)
        digest, part_sha = record.digests()
        multipart_id = self._upload.multipart_id
        assert multipart_id is not None
        where = (self._key, multipart_id, index + 1, self.part_offset(index))
        if self._in_place is not None:
            assert record.stream is not None and record.buffer is None
            etag = self._in_place.finish_part(
                *where, (record.stream.tag,), part_sha, fence=self._fence(), written=size - TAG_LEN
            )
        else:
            assert record.buffer is not None
            sealed = memoryview(record.buffer)[: length + RECORD_OVERHEAD]
            chunks: tuple[Any, ...] = (self._header, sealed) if index == 0 else (sealed,)
            etag = self._store.put_part(*where, chunks, part_sha)
        metrics.BYTES_STORED.inc(size)
        return RecordRow(index, length, record.final, size, digest, etag)

    def recover_into(self, record: Record, start: int, out: memoryview) -> None:
        """The plaintext of an unfinished record's bytes from `start` on, as many as
        `out` holds, recovered from the ciphertext written (those bytes only are
        decrypted) into `out`: for the tail piece of a body that was streamed."""
        assert record.stream is not None
        end = start + out.nbytes
        if not 0 <= start <= end <= record.done:
            raise ValueError(f"bytes {start}-{end} of a record sealed to {record.done}")
        if record.buffer is not None:
            cipher = memoryview(record.buffer)[NONCE_LEN + start : NONCE_LEN + end]
            record.stream.recover_into(cipher, out, at=start)
            return
        self._recover_written(record, start, out)

    def _recover_written(self, record: Record, start: int, out: memoryview) -> None:
        """`recover_into` from an in-place store: the record's nonce and ciphertext read
        back a slice at a time into one pooled buffer (not a record-sized one), each
        slice hashed and the part of it in range decrypted into `out`. The digest of it
        all must be the running digest of what this request wrote: only a newer writer
        can have written there since, and then this request lost. `out` holds what was
        decrypted from the bytes hashed, so a match vouches for it."""
        assert self._in_place is not None and self._upload.multipart_id is not None
        assert record.stream is not None and record.record_hash is not None
        size = NONCE_LEN + record.done
        base = self._cipher_offset(record.index) - NONCE_LEN
        end = start + out.nbytes
        digest = self._sealer.suite.hash()
        buffer = self._slice_pool.take()
        try:
            at = 0  # of the nonce and ciphertext
            while at < size:
                n = min(len(buffer), size - at)
                chunk = memoryview(buffer)[:n]
                got = self._in_place.read_span_into(
                    self._key, self._upload.multipart_id, base + at, chunk
                )
                if got != n:
                    raise StaleWrite(f"record {record.index} was cut short before it was finished")
                digest.update(chunk)
                first = at - NONCE_LEN  # the record byte this chunk's ciphertext begins at
                lo, hi = max(start, first), min(end, first + n)
                if lo < hi:
                    record.stream.recover_into(
                        chunk[lo - first : hi - first], out[lo - start : hi - start], at=lo
                    )
                at += n
        finally:
            self._slice_pool.give(buffer)
        if digest.digest() != record.record_hash.digest():
            raise StaleWrite(f"record {record.index} was overwritten before it was finished")

    def part_offset(self, index: int) -> int:
        return part_offset(len(self._header), self._segment_size, index)

    def _cipher_offset(self, index: int) -> int:
        """Where record `index`'s ciphertext starts in the object, past its nonce."""
        start = self.part_offset(index) + NONCE_LEN
        return start + len(self._header) if index == 0 else start

    def _write_span(self, offset: int, chunks: tuple[Any, ...]) -> None:
        assert self._in_place is not None and self._upload.multipart_id is not None
        self._in_place.write_span(
            self._key, self._upload.multipart_id, offset, chunks, fence=self._fence()
        )


async def _next_batch(record: Record) -> tuple[Batch, Signal | None]:
    """What is queued for the record: the fragments handed over, up to a signal (waiting
    for the first). Its own frame: none of them stays referenced once it returns."""
    item = await record.queue.get()
    batch: Batch = []
    while not isinstance(item, Signal):
        batch.extend(item)
        if record.queue.empty():
            return batch, None
        item = record.queue.get_nowait()
    return batch, item


async def _lending(record: Record, work: Awaitable[T]) -> T:
    """Await work in worker threads that use the record's buffers (its slices, the
    record itself). Cancelled, they may still: those buffers never go back to a pool."""
    try:
        return await work
    except asyncio.CancelledError:
        record.lent = True
        raise


_thread_scratch = threading.local()


def _scratch() -> bytearray:
    """This worker thread's space for ciphertext on its way to an in-place store.

    Used only within one call, so one per thread (not per upload) is enough.
    """
    buffer: bytearray | None = getattr(_thread_scratch, "buffer", None)
    if buffer is None:
        buffer = _thread_scratch.buffer = bytearray(SLICE + TAG_LEN)
    return buffer
