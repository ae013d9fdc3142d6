"""Recording: stored records settle into the catalog in order, each commit fenced."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from gateway import metrics
from gateway.catalog.base import HookEvent, Progress, RecordRow, TailPiece, UploadCatalog
from gateway.leases import Control
from gateway.runner import Runner
from gateway.writer.tail import TailPieces


class Ledger:
    """What a request has recorded, and the stored records waiting to be.

    Records are settled (recorded) in order by one coroutine at a time: the body's
    path when the pipeline is full or at the end, or the recorder as soon as the
    oldest record is stored (progressive). After a failure nothing more is settled.
    """

    def __init__(
        self,
        *,
        offset: int,
        segment_size: int,
        catalog: UploadCatalog,
        runner: Runner,
        control: Control,
        tails: TailPieces,
        progressive: bool,
        expires_at: Callable[[], float | None],
        clock: Callable[[], float],
    ) -> None:
        self._segment_size = segment_size
        self._catalog = catalog
        self._runner = runner
        self._control = control
        self._tails = tails
        # With a checksum nothing may be recorded before the whole body verifies.
        self.progressive = progressive
        self._expires_at = expires_at
        self._clock = clock
        self.committed = offset  # what the catalog records
        self.checksum: bytes | None = None  # sealed, once verified over the whole upload
        self.inflight: deque[asyncio.Task[RecordRow | None]] = deque()
        self.pending: list[RecordRow] = []
        self._settling = asyncio.Lock()
        self._recorder: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None

    def add(self, task: asyncio.Task[RecordRow | None]) -> None:
        """A closed record's task: settle it in its turn."""
        self.inflight.append(task)
        if self.progressive:
            task.add_done_callback(self._stored)

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
                while self.failed is None and self.inflight and _stored_ok(self.inflight[0]):
                    await self._settle_oldest()
            except Exception as exc:
                self.failed = exc

    async def recorder_done(self) -> None:
        if self._recorder is not None:
            await self._recorder

    async def settle(self, keep: int = 0) -> None:
        """Settle records in order until at most `keep` are in flight."""
        async with self._settling:
            if self.failed is not None:
                raise self.failed
            try:
                while len(self.inflight) > keep:
                    await self._settle_oldest()
            except BaseException as exc:
                self.failed = exc
                raise

    async def _settle_oldest(self) -> None:
        try:
            row = await self.inflight.popleft()
        except Exception:
            metrics.SEAL_FAILURES.inc()
            raise
        assert row is not None
        self.pending.append(row)
        if self.progressive:
            await self.commit(offset=row.index * self._segment_size + row.plaintext_len)

    async def commit(
        self,
        *,
        offset: int,
        piece: TailPiece | None = None,
        complete_segment: int | None = None,
        replaces: list[TailPiece] | None = None,
        event: HookEvent | None = None,
    ) -> None:
        """Record the pending records and `offset` (fenced by the lease and the offset).

        `complete_segment`: the upload is complete; the segments below it are sealed.
        `event`: its notification, written to the outbox in the same transaction.
        """
        rows, self.pending = self.pending, []
        drop = rows[-1].index + 1 if rows else None
        complete = complete_segment is not None
        if complete:
            drop = complete_segment
        progress = Progress(
            expected_offset=self.committed,
            offset=offset,
            records=rows,
            add_piece=piece,
            drop_pieces=replaces or (),
            drop_pieces_below=drop,
            complete_at=self._clock() if complete else None,
            expires_at=None if complete else self._expires_at(),
            checksum=self.checksum,
            event=event if complete else None,
        )
        await self._runner.db(self._catalog.commit, self._control.lease, progress)
        metrics.BYTES_IN_FLIGHT.dec(offset - self.committed)
        self.committed = offset
        old = self._tails.forget(drop, bool(replaces))
        if old:
            await self._runner.io(self._tails.delete, old)


def _stored_ok(task: asyncio.Task[RecordRow | None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None
