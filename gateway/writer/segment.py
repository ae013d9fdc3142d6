"""SegmentWriter: one PATCH body in, sealed records and tail pieces out (the facade)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway import metrics
from gateway.buffers import Pools, size_class
from gateway.catalog.base import TailPiece, Upload, UploadCatalog
from gateway.checksums import SEALED_NAME, header_value, new_hasher
from gateway.errors import ERR, GatewayError
from gateway.layout import data_key
from gateway.leases import Control, StopReason
from gateway.limits import ReceiveBudget
from gateway.runner import Receiving, Runner, receiving
from gateway.sealed import Sealer
from gateway.store.base import ObjectStore, StoreUnavailable, writes_in_place
from gateway.tus.headers import ChecksumHeader
from gateway.writer.base import (
    WITHDRAWN,
    Body,
    BodyInterrupted,
    Fragment,
    OnComplete,
    Outcome,
    RunningHash,
)
from gateway.writer.complete import finish_object, part_refs, plaintext_sha256
from gateway.writer.intake import Intake
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.receive import QUEUED_LIMIT, QUIET_READ, SLICE, Slices
from gateway.writer.settle import Ledger
from gateway.writer.tail import PLAIN_AT, TAIL_DIRECT, TailPieces, room_size

# What may be left of a body once its client has sent it all, waiting in the socket's
# receive buffer (16-32 KiB with many connections, autotuned with few) and uvicorn's:
# from there on its client waits for the answer, and its calls go first.
NEAR_END = 256 << 10


class SegmentWriter:
    """Writes one PATCH body: prepare, receive, then finish (or drain), then close."""

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
        segment_size = upload.segment_size
        # The plaintext hash goes on only from where the last request left it.
        start = upload.offset // segment_size
        running = running_hash if running_hash and running_hash.next_index == start else None
        if running is None and start == 0:
            running = RunningHash(0, sealer.suite.hash())
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
        self._client_hash = new_hasher(checksum.algorithm) if checksum else None
        self._segment_size = segment_size
        # A body kept whole for one tail piece holds this much of the shared budget.
        self._tail_units = 0
        self._tail_lent = False  # a cancelled thread may still read it (_lending_tail)
        pools = pools if pools is not None else Pools(keep=0)
        self._sized = pools.sized
        # Bytes of slices in existence, shared by all uploads: bounds memory.
        budget = slices if slices is not None else ReceiveBudget(QUEUED_LIMIT + 2 * SLICE)
        self._slices = Slices(pools, budget)
        self._pipeline = SealingPipeline(
            upload=upload,
            sealer=sealer,
            store=store,
            runner=runner,
            fence=self._fence,
            pools=pools,
            give_back=self._slices.give_all,
            client_hash=self._client_hash,
            running=running,
        )
        self._tails = TailPieces(
            upload_id=upload.id,
            sealer=sealer,
            store=store,
            token=self._fence,
            merge_after=merge_after,
            sized=pools.sized,
        )
        self._ledger = Ledger(
            offset=upload.offset,
            segment_size=segment_size,
            catalog=catalog,
            runner=runner,
            control=control,
            tails=self._tails,
            progressive=checksum is None,
            expires_at=expires_at,
            clock=clock,
        )
        self._intake = Intake(
            upload=upload,
            limit=limit,
            depth=depth,
            slices=self._slices,
            pipeline=self._pipeline,
            ledger=self._ledger,
            tails=self._tails,
        )
        self._final_recorded = False
        self.interrupted = False  # the body ended early (client gone, stopped)

    def _fence(self) -> int:
        return self._control.lease.token

    @property
    def committed(self) -> int:
        """The offset the catalog records now."""
        return self._ledger.committed

    @property
    def received(self) -> int:
        """Bytes of this body taken in so far."""
        return self._intake.received

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
        intake = self._intake
        self._tails.adopt(pieces, intake.segment)
        if self._keep_as_tail():
            return  # the segment's earlier bytes are not needed: it does not fill now
        if self._tails.old or intake.fill:
            intake.preload = await self._load_tails(intake.fill)

    async def _load_tails(self, fill: int) -> Fragment:
        """The segment's first `fill` bytes read back from its tail pieces into a pooled
        buffer, as a fragment for its record's task, which gives it back once sealed.

        Plaintext in memory until sealed, like received bytes: it holds its length of the
        budget. A read cancelled while its worker thread may still write the buffer
        leaves the buffer to that thread: it never goes back to the pool.
        """
        budget = self._slices.budget
        await budget.take(fill)
        buffer = self._sized.take(fill)
        try:
            await self._runner.io(self._tails.load_into, self._tails.old, fill, buffer)
        except asyncio.CancelledError:
            budget.give(fill)
            self._sized.released(len(buffer))
            raise
        except BaseException:
            budget.give(fill)
            self._sized.give(buffer)
            raise
        return (memoryview(buffer)[:fill], False, buffer)

    def _keep_as_tail(self) -> bool:
        """Whether this body becomes one tail piece, sealed when it ends.

        So it is when its announced length ends it inside the segment it starts in, it
        is short (TAIL_DIRECT) and the shared budget has room for it right now. Each of
        a mobile client's small chunks then costs sealing its own bytes, not the
        segment's.
        """
        size = self._content_length
        if size is None or not 0 < size <= TAIL_DIRECT:
            return False
        end = (self._intake.segment + 1) * self._segment_size
        if self.upload.length is not None:
            end = min(end, self.upload.length)
        # It holds its pooled buffer's size of the budget (at most a quarter more), room
        # to seal it in place included.
        units = size_class(room_size(size))
        if self.upload.offset + size >= end or not self._slices.hold_whole(units):
            return False
        self._intake.tail, self._tail_units = self._sized.take(room_size(size)), units
        return True

    # -- the body -----------------------------------------------------------------------

    async def receive(self, body: AsyncIterator[bytes]) -> None:
        # Until its end is near, what the body costs goes after the answers others wait
        # for; from then on this request's own calls are among those.
        flag = receiving()
        flag.active = not self._near_end(0)
        try:
            await self._receive(body, flag)
        finally:
            flag.active = False

    def _near_end(self, received: int) -> bool:
        """Whether what is left of the body after `received` bytes may be waiting in
        buffers already, sent: its client then waits for the answer."""
        left = [] if self._content_length is None else [self._content_length - received]
        if self.upload.length is not None:
            left.append(self.upload.length - self.upload.offset - received)
        return bool(left) and min(left) <= NEAR_END

    async def _receive(self, body: AsyncIterator[bytes], flag: Receiving) -> None:
        """Read the body into the intake until it ends or the lease's watcher stops it.

        A direct body is read into the intake's room, no copy on the way. When its
        client has been quiet for a poll, the watcher withdraws the read to hand the
        slice on; the next read then waits in a buffer made when its bytes come (so a
        silent client holds nothing), which is copied in."""
        control = self._control
        intake = self._intake
        control.on_idle = intake.flush_idle
        direct = body.direct if isinstance(body, Body) and self._content_length else None
        quiet = False  # the read after a withdrawn one: in a buffer of its own
        task = asyncio.current_task()
        while control.stop_reason is None:
            if direct is not None and self.received == self._content_length:
                return
            room = await intake.room() if direct is not None and not quiet else None
            intake.direct = direct if room is not None else None  # what flush_idle withdraws
            control.in_receive = True
            n = 0
            try:
                chunk: memoryview | bytes | None
                if direct is None:
                    chunk = await anext(body)
                elif room is None:
                    chunk = await direct.read(QUIET_READ)
                else:
                    chunk, n = None, await direct.read_into(room)
                if chunk is not None:
                    n = len(chunk)
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
                now = time.monotonic()
                control.waited += now - control.read_started
                if n != WITHDRAWN:  # a withdrawn read brought nothing: still silent
                    control.last_activity = now
            if n == WITHDRAWN:
                quiet = True
                continue
            if n == 0:
                return
            control.received += n
            if flag.active and self._near_end(control.received):
                flag.active = False
            if chunk is None:
                await intake.advance(n)
                continue
            await intake.take(chunk)
            quiet = False
        # Stopped. A body that already brought every byte it announced, or every byte
        # the upload can still take, was not cut short: only its end was not yet read.
        self.interrupted = not self._body_complete()

    def _body_complete(self) -> bool:
        if self._content_length is not None and self.received == self._content_length:
            return True
        length = self.upload.length
        return length is not None and self.upload.offset + self.received == length

    # -- after the body -----------------------------------------------------------------

    async def drain(self) -> None:
        """Settle every record in flight, in order; on failure wait for the rest.

        An unfinished record is cut: its task seals what it was given and stops.
        """
        ledger, intake = self._ledger, self._intake
        intake.cut_open_record(discard=False)
        try:
            await ledger.settle()
            await ledger.recorder_done()
            if intake.cut is not None and intake.cut.task is not None:
                await intake.cut.task
        except BaseException as exc:
            if ledger.failed is None:
                ledger.failed = exc  # record nothing more
            with contextlib.suppress(BaseException):
                await ledger.recorder_done()
            intake.discard_cut()
            for task in ledger.inflight:
                with contextlib.suppress(BaseException):
                    await task
            ledger.inflight.clear()
            if intake.cut is not None and intake.cut.task is not None:
                with contextlib.suppress(BaseException):
                    await intake.cut.task
            raise

    async def drain_quietly(self) -> None:
        """After a failure: let no part write outlive this request's lease."""
        self._intake.discard_cut()
        with contextlib.suppress(Exception):
            await self.drain()

    async def finish(self) -> Outcome:
        await self.drain()
        ledger = self._ledger
        # A stop only matters if it cut the body short: one that arrives after the body
        # ended (while its last records are stored) finds every byte already here.
        stop = self._control.stop_reason if self.interrupted else None
        total = self.upload.offset + self.received
        if self._checksum is not None:
            if self.interrupted:
                await self.scrub()
                return Outcome(ledger.committed, False, stop or StopReason.DISCONNECTED)
            await self._verify_checksum(self._checksum, total)
        length = self.upload.length
        if length is not None and total == length and not self.interrupted:
            await self._complete(total)
            return Outcome(total, True, stop)
        piece: TailPiece | None = None
        merged: list[TailPiece] = []
        intake = self._intake
        if intake.fill > intake.new_from:
            piece, merged = self._tails.plan(intake.segment, intake.new_from, intake.fill)
            await self._lending_tail(self._runner.io(self._put_piece, piece))
        if piece is not None or ledger.pending or total != ledger.committed:
            await ledger.commit(offset=total, piece=piece, replaces=merged)
        return Outcome(total, False, stop)

    async def _verify_checksum(self, checksum: ChecksumHeader, total: int) -> None:
        assert self._client_hash is not None
        if self._intake.tail is not None:
            kept = memoryview(self._intake.tail)[PLAIN_AT : PLAIN_AT + self.received]
            await self._lending_tail(self._runner.seal(self._client_hash.update, kept))
        if self._client_hash.digest() != checksum.digest:
            metrics.CHECKSUM_MISMATCHES.inc()
            await self.scrub()
            raise GatewayError(
                ERR.CHECKSUM_MISMATCH,
                f"the {checksum.algorithm} digest of the body does not match "
                "Upload-Checksum; nothing was recorded",
            )
        if self.upload.offset == 0 and total == self.upload.length:
            # This body is the whole upload: its checksum is the upload's (MANIFEST.md).
            value = header_value(checksum.algorithm, checksum.digest)
            self._ledger.checksum = self._sealer.seal_value(SEALED_NAME, value.encode())

    async def scrub(self) -> None:
        """Drop the records a refused body stored but that will never be recorded.

        They are valid sealings under the upload's key. A store that writes in place
        keeps them in the unfinished object, past what the catalog records: cut it
        there (fenced: a newer writer's bytes are never touched). S3 needs nothing:
        completion assembles only the parts the catalog recorded.
        """
        store, length, committed = self._in_place, self.upload.length, self.committed
        if store is None or (length is not None and committed >= length):
            return
        assert self.upload.multipart_id is not None
        end = self._pipeline.part_offset(committed // self._segment_size)
        with contextlib.suppress(StoreUnavailable):
            await self._runner.io(
                store.discard_from,
                data_key(self.upload.id),
                self.upload.multipart_id,
                end,
                fence=self._fence(),
            )

    async def _lending_tail(self, work: Awaitable[None]) -> None:
        """Await work in a thread that may read the body kept whole. Cancelled, the
        thread may still read it: the buffer then never goes back to the pool."""
        try:
            await work
        except asyncio.CancelledError:
            self._tail_lent = True
            raise

    def _put_piece(self, piece: TailPiece) -> None:
        intake = self._intake
        if intake.tail is None:
            self._put_piece_recovered(piece)
        elif piece.start < intake.new_from:  # merged: the earlier pieces' bytes in front
            with memoryview(intake.tail)[PLAIN_AT : PLAIN_AT + intake.received] as plain:
                self._tails.put_merged(piece, intake.new_from, plain)
        else:
            # Sealed where it was received: the body's plaintext is gone from here on.
            assert piece.length == intake.received
            self._tails.put_room(piece, intake.tail)

    def _put_piece_recovered(self, piece: TailPiece) -> None:
        """Put `piece` from the cut record's plaintext, its own bytes recovered straight
        into the pooled buffer it is sealed in.

        Runs in a worker thread, which gives the buffer back itself once done with it:
        never while it may still read it, even if the request was cancelled meanwhile.
        """
        record = self._intake.cut
        assert record is not None and record.done == self._intake.fill
        room = self._sized.take(room_size(piece.length))
        try:
            with memoryview(room)[PLAIN_AT : PLAIN_AT + piece.length] as plain:
                self._pipeline.recover_into(record, piece.start, plain)
            self._tails.put_room(piece, room)
        finally:
            self._sized.give(room)

    async def _complete(self, total: int) -> None:
        intake = self._intake
        if not self._final_recorded and not (intake.fill == 0 and intake.last_sealed_final):
            # The final record: the segment's bytes from earlier requests, or an empty
            # record when the upload ends on a boundary whose record was sealed before
            # the end was known.
            if intake.open is None:
                intake.start_record()
            await intake.close_record()
            await self.drain()
        ledger = self._ledger
        await ledger.commit(offset=total)
        rows = sorted(
            await self._runner.db(self._catalog.records, self.upload.id), key=lambda r: r.index
        )
        parts = part_refs(rows, len(self.upload.header), self._segment_size)
        assert self.upload.multipart_id is not None
        await self._runner.io(
            finish_object,
            self._store,
            data_key(self.upload.id),
            self.upload.multipart_id,
            self.upload.id,
            parts,
        )
        event = None
        if self._on_complete is not None:
            plain_sha = plaintext_sha256(self._pipeline.running, len(rows))
            event = await self._on_complete(self.upload, rows, plain_sha)
        await ledger.commit(offset=total, complete_segment=intake.segment + 1, event=event)
        self.completed = True

    def close(self) -> None:
        """Account for received bytes that will never be recorded (refused or cut off)."""
        intake = self._intake
        intake.cut_open_record(discard=True)
        if intake.preload is not None:  # read back for a body that never came
            self._slices.give_all([intake.preload])
            intake.preload = None
        if intake.tail is not None and not self._tail_lent:
            self._sized.give(intake.tail)
        intake.tail = None
        self._slices.budget.give(self._tail_units)
        self._tail_units = 0
        metrics.BYTES_IN_FLIGHT.dec(self.upload.offset + intake.received - self.committed)
        intake.received = self.committed - self.upload.offset

    def running_hash(self) -> RunningHash | None:
        """The plaintext hash to carry to the next request, if it covers what is recorded."""
        running = self._pipeline.running
        if self.completed or running is None:
            return None
        if running.next_index * self._segment_size > self.committed:
            return None  # it saw records that were never recorded (checksum, failure)
        return running
