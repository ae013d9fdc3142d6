"""The body's bytes into records: where the body stands in its segment, and the open record."""

from __future__ import annotations

from gateway import metrics
from gateway.catalog.base import Upload
from gateway.sealed import TAG_LEN
from gateway.writer.base import DirectRead, Fragment, Overflow
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.receive import Slices
from gateway.writer.record import Record, Signal
from gateway.writer.settle import Ledger
from gateway.writer.tail import PLAIN_AT, TailPieces


class Intake:
    """Takes the body in: into slices, handed to each segment's record in turn. The
    bytes are put into `room()`, by a direct read or by copying a chunk (`take`).

    A body kept whole (`tail`, see SegmentWriter.prepare) bypasses the records: its
    bytes wait in one buffer for the tail piece sealed when it ends.
    """

    def __init__(
        self,
        *,
        upload: Upload,
        limit: int,
        depth: int,
        slices: Slices,
        pipeline: SealingPipeline,
        ledger: Ledger,
        tails: TailPieces,
    ) -> None:
        self._upload = upload
        self._limit = limit  # the upload's length, or the max size while it is deferred
        self._depth = depth
        self._slices = slices
        self._pipeline = pipeline
        self._ledger = ledger
        self._tails = tails
        self._segment_size = upload.segment_size
        self.segment = upload.offset // self._segment_size
        self.fill = upload.offset % self._segment_size
        self.new_from = self.fill  # bytes before this came from earlier requests
        # Those bytes, read back from tail pieces into a pooled buffer, for the record.
        self.preload: Fragment | None = None
        # A body that ends inside its segment (its length says so): its bytes (the
        # `received` from PLAIN_AT on), kept for one tail piece sealed where they lie.
        self.tail: bytearray | None = None
        self.open: Record | None = None  # the record the next bytes go to
        self.cut: Record | None = None  # the unfinished record, once the body ended
        self.last_sealed_final = False
        self.received = 0
        self.direct: DirectRead | None = None  # the body, when read straight into `room`

    async def take(self, chunk: bytes | memoryview) -> None:
        """Copy a chunk of the body in (for bodies not read straight into `room`)."""
        if self._upload.offset + self.received + len(chunk) > self._limit:
            raise Overflow
        tail = self.tail
        if tail is not None and PLAIN_AT + self.received + len(chunk) > len(tail) - TAG_LEN:
            raise Overflow  # never past its Content-Length (HTTP framing sees to it)
        view = memoryview(chunk)
        while view:
            room = await self.room()
            n = min(len(view), len(room))
            room[:n] = view[:n]
            await self.advance(n)
            view = view[n:]

    async def room(self) -> memoryview:
        """Where the body's next bytes go: the slice held (waiting for the budget if need
        be), or the buffer of a body kept whole. Past what the upload can take, one
        spare byte: any byte put there overflows."""
        most = self._limit - self._upload.offset - self.received
        if most <= 0:
            view = memoryview(b"")
        elif self.tail is not None:
            at = PLAIN_AT + self.received
            view = memoryview(self.tail)[at : min(len(self.tail) - TAG_LEN, at + most)]
        else:
            record = self.open if self.open is not None else self.start_record()
            await self._slices.ready()
            view = self._slices.room(min(most, record.length - self.fill))
        return view if view else memoryview(bytearray(1))

    async def advance(self, n: int) -> None:
        """`n` bytes were put at the start of `room()`: count them and hand on the slice
        they filled (closing the record they completed)."""
        if self._upload.offset + self.received + n > self._limit:
            raise Overflow
        if self.tail is not None and PLAIN_AT + self.received + n > len(self.tail) - TAG_LEN:
            raise Overflow
        self.fill += n
        self.received += n
        metrics.BYTES_IN_FLIGHT.inc(n)
        record = self.open
        if self.tail is not None or record is None:
            return
        self._slices.filled(n)
        if self.fill == record.length:
            await self.close_record()
        elif self._slices.full:
            await self._feed(record)

    def flush_idle(self) -> None:
        """The client is slow to send more: hand the partly filled slice to sealing, so
        it (and its share of the budget) comes back while the read waits.

        Called on the event loop only while the body's read waits for the next chunk. A
        direct read into the slice gives its buffer back first, unless its bytes are
        already there, not yet counted."""
        if self._slices.partial and self.open is not None:
            if self.direct is not None and not self.direct.withdraw():
                return
            self._slices.slow_down()
            self._hand_slice(self.open)

    def start_record(self) -> Record:
        """Open the current segment's record; what it holds follows from the length."""
        index = self.segment
        start = index * self._segment_size
        length, final = self._segment_size, False
        if self._upload.length is not None:
            length = min(self._segment_size, self._upload.length - start)
            final = start + length == self._upload.length
        record = self._pipeline.start(index, final, length)
        self.open = record
        if self.preload is not None:  # the record's task gives its buffer back
            self._pipeline.hand(record, self.preload)
        self.preload = None
        return record

    def _hand_slice(self, record: Record) -> None:
        fragment = self._slices.hand_over()
        if fragment is not None:
            self._pipeline.hand(record, fragment)

    async def _feed(self, record: Record) -> None:
        """Hand the slice to the record's task; wait while too much is queued."""
        self._hand_slice(record)
        await self._pipeline.wait_for_room(record)

    async def close_record(self) -> None:
        record = self.open
        assert record is not None and record.task is not None
        await self._feed(record)
        self._pipeline.signal(record, Signal.CLOSE)
        self._ledger.add(record.task)
        self.open = None
        self.segment += 1
        self.fill = 0
        self.new_from = 0
        self._tails.next_segment()
        self.last_sealed_final = record.final
        # No byte can follow a final record: the body's end need not wait for storage.
        if not record.final:
            await self._ledger.settle(keep=self._depth)

    def cut_open_record(self, *, discard: bool) -> None:
        """The body ended before the open record filled: stop its task."""
        record = self.open
        if record is None:
            return
        self.open = None
        if discard:
            record.discard = True
        self._hand_slice(record)
        self._pipeline.signal(record, Signal.CUT)
        self.cut = record

    def discard_cut(self) -> None:
        """After a failure: the unfinished record's task skips what is still queued."""
        self.cut_open_record(discard=True)
        if self.cut is not None:
            self.cut.discard = True
