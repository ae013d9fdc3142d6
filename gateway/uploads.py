"""The uploads service: create, inspect, write and finish uploads. No HTTP here."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TypeAlias, cast

from gateway import metrics
from gateway.auth import principal_key
from gateway.buffers import Pools
from gateway.catalog.base import (
    Catalog,
    LeaseLost,
    OffsetConflict,
    Principal,
    TailPiece,
    Upload,
    UploadState,
)
from gateway.errors import ERR, GatewayError
from gateway.finals import Finals
from gateway.keys.base import KeyProvider, WrappedKey
from gateway.layout import data_key
from gateway.leases import Leases, StopReason
from gateway.limits import ReceiveBudget, WriterSlots
from gateway.metadata import seal_legacy_metadata, seal_metadata
from gateway.removal import Removal
from gateway.rules import UploadRules, check_owned, check_quota, store_call
from gateway.runner import Runner
from gateway.sealed import Sealer, new_header
from gateway.store.base import ObjectStore, StaleWrite, StoreUnavailable
from gateway.tus.headers import ChecksumHeader, new_upload_id
from gateway.upload_keys import UploadKeys
from gateway.writer import (
    BodyInterrupted,
    Outcome,
    Overflow,
    RunningHash,
    SegmentWriter,
)

log = logging.getLogger("gateway.uploads")
# What a write reads as it takes the lease: the upload, its wrapped key, its tail pieces.
_WritingState: TypeAlias = tuple[Upload | None, WrappedKey | None, list[TailPiece]]
_MAX_RUNNING_HASHES = 10_000  # one small object per upload between its requests

# What this service supports, in the order tus clients expect to read it.
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
)

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


async def empty_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class Uploads:
    """The service the tus handler calls. Removal, final concatenations and an upload's
    key at work (metadata, manifests) are services of their own (`gateway.removal`,
    `gateway.finals`, `gateway.upload_keys`); this hands their calls on.

    Every collaborator is built by the app factory and passed in: the pools and the
    leases are shared with the other services, and the limits are the process's own.
    """

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: Catalog,
        keys: KeyProvider,
        runner: Runner,
        leases: Leases,
        upload_keys: UploadKeys,
        writers: WriterSlots,
        budget: ReceiveBudget,
        pools: Pools,
        removal: Removal,
        finals: Finals,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.store = store
        self.catalog = catalog
        self.keys = keys
        self.runner = runner
        self.leases = leases
        self.upload_keys = upload_keys
        # Writers per principal, with a share kept for principals holding none.
        self._writers = writers
        # Received plaintext waiting to be sealed, in bytes, across all uploads: this,
        # not the number of writers, bounds memory (a stalled body holds next to none).
        self.budget = budget
        self._pools = pools
        self.removal = removal
        self.finals = finals
        self.clock = clock
        self._hashes: dict[str, RunningHash] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Seal the metadata of rows written before metadata was sealed."""
        await seal_legacy_metadata(
            self.catalog, self.keys, self.runner, segment_size=self.rules.segment_size
        )

    async def close(self) -> None:
        """Stop running writes: each saves what it received and answers 503."""
        self.leases.stop_all()

    # -- reading ------------------------------------------------------------------------

    async def get(self, principal: Principal, upload_id: str) -> Upload:
        """The upload as recorded, if `principal` owns it; a crash-cut completion is finished."""
        return await self._finish_cut(principal, await self._owned(principal, upload_id))

    async def head(self, principal: Principal, upload_id: str) -> Upload:
        """The upload for a tus HEAD: as `get`, but a PATCH whose body went silent (a
        client that lost its connection) is asked to let go first, and the upload is
        read once it saved what it received: the client resumes from that offset, and
        its next PATCH is not refused because the offset moved after the HEAD."""
        upload = await self._owned(principal, upload_id)
        if upload.state == UploadState.ACTIVE and upload.offset != upload.length:
            read = functools.partial(self.catalog.get_upload, upload_id)
            found = await self.leases.read_between_writers(upload_id, read)
            if found is None:  # a live writer, or one that kept it: what is recorded now
                found = await self.runner.db(read)
            upload = self._check_owned(principal, found)
        return await self._finish_cut(principal, upload)

    async def _finish_cut(self, principal: Principal, upload: Upload) -> Upload:
        upload_id = upload.id
        if (
            upload.state == UploadState.ACTIVE
            and upload.length is not None
            and upload.offset == upload.length
        ):
            # The end is recorded. The writer that recorded it may still be completing
            # the object, which takes long for a large one: then answer at once with
            # what is recorded rather than wait for its lease (and answer 423). If the
            # holder is gone (a crash cut the completion), its lease goes stale and is
            # taken over within takeover_wait, and this finishes the upload.
            if self.leases.writing_here(upload_id):
                return upload
            try:
                upload, _ = await self.write(
                    principal,
                    upload_id,
                    offset=upload.offset,
                    body=empty_body(),
                    acquire_wait=self.leases.takeover_wait,
                )
            except GatewayError as exc:
                if exc.err not in (ERR.UPLOAD_LOCKED, ERR.SERVER_BUSY):
                    raise
                # Locked: a live writer elsewhere is still completing it.
        return upload

    async def _owned(self, principal: Principal, upload_id: str) -> Upload:
        upload = await self.runner.db(self.catalog.get_upload, upload_id)
        return self._check_owned(principal, upload)

    def _check_owned(self, principal: Principal, upload: Upload | None) -> Upload:
        return check_owned(principal, upload, self.clock())

    async def open_metadata(self, upload: Upload) -> str | None:
        """The Upload-Metadata header exactly as the client sent it, or None."""
        return await self.upload_keys.open_metadata(upload)

    async def signed_manifest(self, upload: Upload) -> str:
        """The signed manifest an authorised reader is served (see UploadKeys)."""
        return await self.upload_keys.signed_manifest(upload)

    # -- creating -----------------------------------------------------------------------

    def _expiry(self) -> float:
        return self.clock() + self.rules.upload_ttl

    async def create(
        self,
        principal: Principal,
        *,
        length: int | None,
        metadata: str | None,
        partial_concat: str | None = None,
    ) -> Upload:
        """A new upload; `length` None defers it. The data key is born and wrapped here."""
        if length is not None and length > self.rules.max_size:
            raise GatewayError(
                ERR.MAX_SIZE_EXCEEDED,
                f"Upload-Length exceeds this server's Tus-Max-Size of {self.rules.max_size}",
            )
        await check_quota(self.rules, self.runner, self.catalog, principal, length or 0)
        upload_id = new_upload_id()
        dek, dek_id = os.urandom(32), os.urandom(16)
        header = new_header(
            dek,
            upload_id=upload_id,
            dek_id=dek_id,
            segment_size=self.rules.segment_size,
            plaintext_size=length,
        )
        wrapped = self.keys.wrap(dek, upload_id=upload_id, dek_id=dek_id)
        sealed_metadata = seal_metadata(Sealer(dek, header), metadata)
        multipart_id = await store_call(
            self.runner, self.store.start_multipart, data_key(upload_id)
        )
        now = self.clock()
        upload = Upload(
            id=upload_id,
            owner=principal.id,
            tenant=principal.tenant,
            length=length,
            offset=0,
            metadata=sealed_metadata,
            state=UploadState.ACTIVE,
            created_at=now,
            expires_at=now + self.rules.upload_ttl,
            segment_size=self.rules.segment_size,
            header=header.encode(),
            dek_id=dek_id,
            multipart_id=multipart_id,
            concat=partial_concat,
        )
        await self.runner.db(self.catalog.create_upload, upload, wrapped)
        metrics.UPLOADS_CREATED.inc()
        log.info("upload created", extra={"upload_id": upload_id, "principal": principal.id})
        if length == 0:
            # Nothing to wait for: seal the empty final record and sign it now.
            upload, _ = await self.write(principal, upload_id, offset=0, body=empty_body())
        return upload

    # -- writing ------------------------------------------------------------------------

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
        async with self._writers.slot(principal_key(principal)):
            return await self._write_held(
                principal, upload_id, offset, body, length, checksum, content_length, acquire_wait
            )

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
    ) -> tuple[Upload, Outcome]:
        # Whether the request may write, checked before the holder (if any) is asked to
        # let go; then the upload as of now, under the lease, with its key and tail
        # pieces. Both in the catalog call that takes the lease.
        writable = functools.partial(self._writable, principal, upload_id)
        state = functools.partial(self._writing_state, upload_id)
        async with self.leases.held(
            upload_id, watch=True, wait=acquire_wait, check=writable, load=state
        ) as control:
            found, wrapped, pieces = cast(_WritingState, control.loaded)
            upload = self._check_owned(principal, found)
            if offset != upload.offset:
                raise GatewayError(
                    ERR.MISMATCHED_OFFSET,
                    f"Upload-Offset {offset} does not match the upload's offset {upload.offset}",
                    headers={"Upload-Offset": str(upload.offset)},
                )
            upload = await self._settle_length(upload, length)
            limit = self.rules.max_size if upload.length is None else upload.length
            if content_length is not None and offset + content_length > limit:
                raise GatewayError(
                    ERR.UPLOAD_SIZE_EXCEEDED,
                    f"the body would take the upload past its length of {limit} bytes",
                )
            if upload.state == UploadState.COMPLETE:
                # A finished upload takes no byte more, announced or not (chunked).
                with contextlib.suppress(BodyInterrupted):
                    async for chunk in body:
                        if chunk:
                            raise GatewayError(
                                ERR.UPLOAD_SIZE_EXCEEDED,
                                f"the upload is complete at {upload.offset} bytes",
                                headers={"Upload-Offset": str(upload.offset)},
                            )
                return upload, Outcome(upload.offset, True, None)
            writer = SegmentWriter(
                upload=upload,
                sealer=self.upload_keys.sealer(upload, wrapped),
                store=self.store,
                catalog=self.catalog,
                runner=self.runner,
                control=control,
                checksum=checksum,
                limit=limit,
                depth=self.rules.pipeline_depth,
                expires_at=self._expiry,
                clock=self.clock,
                content_length=content_length,
                running_hash=self._hashes.pop(upload_id, None),
                on_complete=self.upload_keys.sign_manifest,
                pools=self._pools,
                slices=self.budget,
                merge_after=self.rules.tail_merge_after,
            )
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
                self._keep_hash(upload_id, writer.running_hash())
            except StaleWrite as exc:
                await writer.drain_quietly()
                raise GatewayError(
                    ERR.UPLOAD_INTERRUPTED, "a newer request took this upload over"
                ) from exc
            except StoreUnavailable as exc:
                await writer.drain_quietly()
                raise GatewayError(
                    ERR.STORE_UNAVAILABLE,
                    "object storage is unavailable; resume from Upload-Offset later",
                    headers={"Retry-After": "5", "Upload-Offset": str(writer.committed)},
                ) from exc
            except LeaseLost as exc:
                await writer.drain_quietly()
                raise GatewayError(
                    ERR.UPLOAD_INTERRUPTED, "this request lost its hold on the upload"
                ) from exc
            except OffsetConflict as exc:
                raise GatewayError(ERR.MISMATCHED_OFFSET, "the upload moved on") from exc
            finally:
                writer.close()
            # The upload as recorded, read in the catalog call that hands the lease back.
            found = await self.leases.release_reading(
                control, functools.partial(self.catalog.get_upload, upload_id)
            )
        upload = self._check_owned(principal, found)
        if outcome.stop_reason in _STOPPED:
            err, sentence = _STOPPED[outcome.stop_reason]
            raise GatewayError(err, sentence, headers={"Upload-Offset": str(upload.offset)})
        return upload, outcome

    def _keep_hash(self, upload_id: str, running: RunningHash | None) -> None:
        if running is None:
            return
        if len(self._hashes) >= _MAX_RUNNING_HASHES:
            self._hashes.pop(next(iter(self._hashes)))  # the oldest: it is rebuilt if needed
        self._hashes[upload_id] = running

    def _writable(self, principal: Principal, upload_id: str) -> None:
        """Refuse a PATCH of someone else's upload, or of a final one (catalog thread)."""
        upload = self._check_owned(principal, self.catalog.get_upload(upload_id))
        if upload.concat is not None and upload.concat.startswith("final"):
            raise GatewayError(ERR.MODIFY_FINAL, "a final concatenated upload cannot be patched")

    def _writing_state(self, upload_id: str) -> _WritingState:
        """The upload, its wrapped key and its tail pieces (catalog thread)."""
        upload = self.catalog.get_upload(upload_id)
        if upload is None:
            return None, None, []
        return upload, self.catalog.wrapped_key(upload.dek_id), self.catalog.tail_pieces(upload_id)

    async def _settle_length(self, upload: Upload, length: int | None) -> Upload:
        if length is None:
            return upload
        if upload.length is not None:
            if length != upload.length:
                raise GatewayError(ERR.LENGTH_ALREADY_SET, "Upload-Length cannot change once set")
            return upload
        if length < upload.offset:
            raise GatewayError(ERR.INVALID_UPLOAD_LENGTH, "Upload-Length is below Upload-Offset")
        if length > self.rules.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "Upload-Length exceeds Tus-Max-Size")
        await self.runner.db(self.catalog.set_length, upload.id, length)
        return replace(upload, length=length)

    # -- handed on ----------------------------------------------------------------------

    async def create_final(
        self, principal: Principal, *, concat: str, partial_ids: list[str], metadata: str | None
    ) -> Upload:
        """A final upload: an ordered list of finished partials, no byte copied."""
        return await self.finals.create(
            principal, concat=concat, partial_ids=partial_ids, metadata=metadata
        )

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        """Remove the upload (tus termination); a partial a final reads is retired."""
        await self.removal.terminate(principal, upload_id)

    async def reap_once(self) -> int:
        """Remove unfinished uploads whose expiry has passed. Returns how many."""
        return await self.removal.reap_once()
