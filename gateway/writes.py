"""The writes service: a PATCH body appended to an upload under its lease. No HTTP here."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TypeAlias, cast

from gateway.auth import principal_key
from gateway.buffers import Pools
from gateway.catalog.base import (
    CatalogFull,
    CatalogUnavailable,
    LeaseLost,
    OffsetConflict,
    Principal,
    TailPiece,
    Upload,
    UploadCatalog,
    UploadState,
)
from gateway.errors import ERR, GatewayError
from gateway.keys.base import WrappedKey
from gateway.leases import Control, Leases, StopReason
from gateway.limits import ReceiveBudget, WriterSlots
from gateway.rules import UploadRules, catalog_unavailable, check_owned, insufficient_storage
from gateway.runner import Runner
from gateway.store.base import ObjectStore, StaleWrite, StoreFull, StoreUnavailable
from gateway.tus.headers import ChecksumHeader
from gateway.upload_keys import UploadKeys
from gateway.writer import (
    BodyInterrupted,
    Outcome,
    Overflow,
    RunningHash,
    SegmentWriter,
)

# What a write reads as it takes the lease: the upload, its wrapped key, its tail pieces.
_WritingState: TypeAlias = tuple[Upload | None, WrappedKey | None, list[TailPiece]]
_MAX_RUNNING_HASHES = 10_000  # one small object per upload between its requests

_STOPPED = {
    StopReason.RELEASED: (ERR.UPLOAD_INTERRUPTED, "a newer request for this upload took it over"),
    StopReason.TIMEOUT: (
        ERR.UPLOAD_INTERRUPTED,
        "no bytes arrived for too long; what came is saved",
    ),
    StopReason.TOO_SLOW: (
        ERR.UPLOAD_INTERRUPTED,
        "the body arrived too slowly; what came is saved, resume from Upload-Offset",
    ),
    StopReason.LEASE_LOST: (ERR.UPLOAD_INTERRUPTED, "this request lost its hold on the upload"),
    StopReason.SHUTDOWN: (
        ERR.SERVER_SHUTDOWN,
        "the server is restarting; resume from Upload-Offset",
    ),
}


class Writes:
    """Appends bodies to uploads: a writer slot of the principal's, then the upload's
    lease, then a `SegmentWriter` sealing the body as it arrives.

    The running hash of an upload (for a checksum over several PATCH requests) is kept
    here between its requests, a bounded number of them.
    """

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: UploadCatalog,
        runner: Runner,
        leases: Leases,
        upload_keys: UploadKeys,
        writers: WriterSlots,
        budget: ReceiveBudget,
        pools: Pools,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._store = store
        self._catalog = catalog
        self._runner = runner
        self._leases = leases
        self._upload_keys = upload_keys
        # Writers per principal, with a share kept for principals holding none.
        self._writers = writers
        # Received plaintext waiting to be sealed, in bytes, across all uploads: this,
        # not the number of writers, bounds memory (a stalled body holds next to none).
        self.budget = budget
        self._pools = pools
        self._clock = clock
        self._hashes: dict[str, RunningHash] = {}

    async def write(
        self,
        principal: Principal,
        upload_id: str,
        *,
        offset: int,
        body: AsyncIterator[bytes],
        length: int | None = None,
        checksum: ChecksumHeader | None = None,
        content_length: int | None = None,
        acquire_wait: float | None = None,
    ) -> tuple[Upload, Outcome]:
        """Append `body` at `offset`. Returns the upload as recorded afterwards.

        `acquire_wait` bounds the wait for a busy upload (default: acquire_timeout).
        """
        key = principal_key(principal)
        arrived: int | None = None
        if not self._writers.free_for(key):
            # It waits for a slot, maybe for seconds, and its client may give up and
            # send its next PATCH meanwhile: once this one has a slot it must not stop
            # that one. It asks only a holder that took the upload before it arrived.
            arrived = await self._leases.arrival_token()
        async with self._writers.slot(key):
            try:
                return await self._write_held(
                    principal,
                    upload_id,
                    offset,
                    body,
                    length,
                    checksum,
                    content_length,
                    acquire_wait,
                    arrived,
                )
            except CatalogFull as exc:
                # Taking or handing back the lease found no space: say what is recorded
                # (a read needs none), so the client knows where to resume.
                recorded = await self._recorded_offset(principal, upload_id)
                raise insufficient_storage(recorded) from exc

    async def _recorded_offset(self, principal: Principal, upload_id: str) -> int | None:
        """The upload's recorded offset if `principal` may see it, else None."""
        try:
            upload = await self._runner.db(self._catalog.get_upload, upload_id)
            return self._check_owned(principal, upload).offset
        except (CatalogUnavailable, GatewayError):
            return None

    async def _write_held(
        self,
        principal: Principal,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        length: int | None,
        checksum: ChecksumHeader | None,
        content_length: int | None,
        acquire_wait: float | None,
        arrived: int | None,
    ) -> tuple[Upload, Outcome]:
        # Whether the request may write, checked before the holder (if any) is asked to
        # let go; then the upload as of now, under the lease, with its key and tail
        # pieces. Both in the catalog call that takes the lease.
        writable = functools.partial(self._writable, principal, upload_id)
        state = functools.partial(self._writing_state, upload_id)
        async with self._leases.held(
            upload_id,
            watch=True,
            wait=acquire_wait,
            check=writable,
            load=state,
            ask_up_to=arrived,
        ) as control:
            found, wrapped, pieces = cast(_WritingState, control.loaded)
            upload = self._check_owned(principal, found)
            upload, limit = await self._accept(upload, offset, length, content_length)
            if upload.state == UploadState.COMPLETE:
                await self._refuse_more(upload, body)
                return upload, Outcome(upload.offset, True, None)
            writer = self._writer(upload, wrapped, control, checksum, limit, content_length)
            outcome = await self._receive(writer, pieces, body, limit)
            # The upload as recorded, read in the catalog call that hands the lease back.
            found = await self._leases.release_reading(
                control, functools.partial(self._catalog.get_upload, upload_id)
            )
        upload = self._check_owned(principal, found)
        if outcome.stop_reason in _STOPPED:
            err, sentence = _STOPPED[outcome.stop_reason]
            raise GatewayError(err, sentence, headers={"Upload-Offset": str(upload.offset)})
        return upload, outcome

    async def _accept(
        self, upload: Upload, offset: int, length: int | None, content_length: int | None
    ) -> tuple[Upload, int]:
        """Check the request against the upload, settle a deferred length; the upload and
        the byte count it may not pass."""
        if offset != upload.offset:
            raise GatewayError(
                ERR.MISMATCHED_OFFSET,
                f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                headers={"Upload-Offset": str(upload.offset)},
            )
        upload = await self._settle_length(upload, length)
        limit = self._rules.max_size if upload.length is None else upload.length
        if content_length is not None and offset + content_length > limit:
            raise GatewayError(
                ERR.UPLOAD_SIZE_EXCEEDED,
                f"the body would take the upload past its length of {limit} bytes",
            )
        return upload, limit

    @staticmethod
    async def _refuse_more(upload: Upload, body: AsyncIterator[bytes]) -> None:
        """A finished upload takes no byte more, announced or not (chunked)."""
        with contextlib.suppress(BodyInterrupted):
            async for chunk in body:
                if chunk:
                    raise GatewayError(
                        ERR.UPLOAD_SIZE_EXCEEDED,
                        f"the upload is complete at {upload.offset} bytes",
                        headers={"Upload-Offset": str(upload.offset)},
                    )

    def _writer(
        self,
        upload: Upload,
        wrapped: WrappedKey | None,
        control: Control,
        checksum: ChecksumHeader | None,
        limit: int,
        content_length: int | None,
    ) -> SegmentWriter:
        return SegmentWriter(
            upload=upload,
            sealer=self._upload_keys.writing_sealer(upload, wrapped),
            store=self._store,
            catalog=self._catalog,
            runner=self._runner,
            control=control,
            checksum=checksum,
            limit=limit,
            depth=self._rules.pipeline_depth,
            expires_at=self._expiry,
            clock=self._clock,
            content_length=content_length,
            running_hash=self._hashes.pop(upload.id, None),
            on_complete=self._upload_keys.sign_manifest,
            pools=self._pools,
            slices=self.budget,
            merge_after=self._rules.tail_merge_after,
        )

    async def _receive(
        self,
        writer: SegmentWriter,
        pieces: list[TailPiece],
        body: AsyncIterator[bytes],
        limit: int,
    ) -> Outcome:
        """Seal and store the body, record it; the errors of storage and of the lease
        become the answers a client acts on."""
        try:
            await writer.prepare(pieces)
            try:
                await writer.receive(body)
            except Overflow:
                await writer.drain()  # nothing beyond what is recorded is kept
                await writer.scrub()
                raise GatewayError(
                    ERR.UPLOAD_SIZE_EXCEEDED,
                    f"the body takes the upload past its length of {limit} bytes",
                    headers={"Upload-Offset": str(writer.committed)},
                ) from None
            outcome = await writer.finish()
            self._keep_hash(writer.upload.id, writer.running_hash())
        except StaleWrite as exc:
            await writer.drain_quietly()
            raise GatewayError(
                ERR.UPLOAD_INTERRUPTED, "a newer request took this upload over"
            ) from exc
        except (StoreFull, CatalogFull) as exc:
            await writer.drain_quietly()
            raise insufficient_storage(writer.committed) from exc
        except StoreUnavailable as exc:
            await writer.drain_quietly()
            raise GatewayError(
                ERR.STORE_UNAVAILABLE,
                "object storage is unavailable; resume from Upload-Offset later",
                headers={"Retry-After": "5", "Upload-Offset": str(writer.committed)},
            ) from exc
        except CatalogUnavailable as exc:
            await writer.drain_quietly()
            raise catalog_unavailable(writer.committed) from exc
        except LeaseLost as exc:
            await writer.drain_quietly()
            raise GatewayError(
                ERR.UPLOAD_INTERRUPTED, "this request lost its hold on the upload"
            ) from exc
        except OffsetConflict as exc:
            raise GatewayError(ERR.MISMATCHED_OFFSET, "the upload moved on") from exc
        finally:
            writer.close()
        return outcome

    def _expiry(self) -> float:
        return self._clock() + self._rules.upload_ttl

    def _check_owned(self, principal: Principal, upload: Upload | None) -> Upload:
        return check_owned(principal, upload, self._clock())

    def _keep_hash(self, upload_id: str, running: RunningHash | None) -> None:
        if running is None:
            return
        if len(self._hashes) >= _MAX_RUNNING_HASHES:
            self._hashes.pop(next(iter(self._hashes)))  # the oldest: it is rebuilt if needed
        self._hashes[upload_id] = running

    def _writable(self, principal: Principal, upload_id: str) -> None:
        """Refuse a PATCH of someone else's upload, or of a final one (catalog thread)."""
        upload = self._check_owned(principal, self._catalog.get_upload(upload_id))
        if upload.concat is not None and upload.concat.startswith("final"):
            raise GatewayError(ERR.MODIFY_FINAL, "a final concatenated upload cannot be patched")

    def _writing_state(self, upload_id: str) -> _WritingState:
        """The upload, its wrapped key and its tail pieces (catalog thread)."""
        upload = self._catalog.get_upload(upload_id)
        if upload is None:
            return None, None, []
        return (
            upload,
            self._catalog.wrapped_key(upload.dek_id),
            self._catalog.tail_pieces(upload_id),
        )

    async def _settle_length(self, upload: Upload, length: int | None) -> Upload:
        if length is None:
            return upload
        if upload.length is not None:
            if length != upload.length:
                raise GatewayError(ERR.LENGTH_ALREADY_SET, "Upload-Length cannot change once set")
            return upload
        if length < upload.offset:
            raise GatewayError(ERR.INVALID_UPLOAD_LENGTH, "Upload-Length is below Upload-Offset")
        if length > self._rules.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "Upload-Length exceeds Tus-Max-Size")
        await self._runner.db(self._catalog.set_length, upload.id, length)
        return replace(upload, length=length)
