"""The uploads service: create, inspect, write, finish and remove uploads. No HTTP here."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TypeAlias, TypeVar, cast

from gateway import metrics
from gateway.auth import principal_key
from gateway.buffers import Pools
from gateway.catalog.base import (
    Catalog,
    LeaseLost,
    OffsetConflict,
    Principal,
    RecordRow,
    TailPiece,
    Upload,
    UploadState,
)
from gateway.checksums import SEALED_NAME
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.keys.base import KeyError_, KeyProvider, WrappedKey
from gateway.layout import data_key, manifest_keys, upload_prefix
from gateway.leases import Leases, StopReason
from gateway.limits import ReceiveBudget, WriterSlots
from gateway.metadata import ValueKey, open_metadata, seal_legacy_metadata, seal_metadata
from gateway.reader import Reader
from gateway.runner import Runner
from gateway.sealed import Header, InvalidSealedData, Sealer, new_header
from gateway.signer import (
    open_reader_manifest,
    plaintext_digest,
    write_concat_manifest,
    write_manifest,
)
from gateway.store.base import ObjectNotFound, ObjectStore, StaleWrite, StoreUnavailable
from gateway.tus.headers import ChecksumHeader, new_upload_id
from gateway.writer import (
    BodyInterrupted,
    Outcome,
    Overflow,
    RunningHash,
    SegmentWriter,
)

log = logging.getLogger("gateway.uploads")
T = TypeVar("T")
# What a write reads as it takes the lease: the upload, its wrapped key, its tail pieces.
_WritingState: TypeAlias = tuple[Upload | None, WrappedKey | None, list[TailPiece]]
_MAX_RUNNING_HASHES = 10_000  # one small object per upload between its requests
# How long a DELETE waits for readers of the catalog to let a deleted key be erased.
SHRED_WAIT = 2.0

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
    def __init__(
        self,
        settings: Settings,
        *,
        store: ObjectStore,
        catalog: Catalog,
        keys: KeyProvider,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.keys = keys
        self.clock = clock
        self.runner = Runner(settings.io_threads, settings.sealing_threads)
        self.leases = Leases(
            catalog,
            self.runner,
            ttl=settings.lease_ttl,
            acquire_timeout=settings.acquire_timeout,
            network_timeout=settings.network_timeout,
            min_rate=settings.min_receive_rate,
            rate_window=settings.receive_rate_window,
            clock=clock,
        )
        self._reaper: asyncio.Task[None] | None = None
        self._hashes: dict[str, RunningHash] = {}
        self._pools = Pools(keep=2 * settings.pipeline_depth + 2)
        # Received plaintext waiting to be sealed, in bytes, across all uploads: this,
        # not the number of writers, bounds memory (a stalled body holds next to none).
        self._slices = ReceiveBudget(settings.receive_budget)
        # Writers per principal, with a share kept for principals holding none.
        # On S3 each writer also holds whole records (segment-sized buffers) while
        # they are sealed and sent: there the writer count bounds that memory.
        writers, reserved = settings.max_writers, settings.reserved_writers
        if settings.uses_s3 and settings.s3_max_writers < writers:
            # The reserve keeps its share of the slots.
            reserved = -(-reserved * settings.s3_max_writers // writers)
            writers = settings.s3_max_writers
        self._writers = WriterSlots(
            writers,
            reserved=reserved,
            per_principal=settings.max_writers_per_principal,
            wait=settings.acquire_timeout,
        )
        self.reader = Reader(store, catalog, keys)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await seal_legacy_metadata(
            self.catalog, self.keys, self.runner, segment_size=self.settings.segment_size
        )
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        self.leases.stop_all()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self.runner.close()

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
        # Someone else's upload is indistinguishable from a missing one.
        if (
            upload is None
            or upload.state == UploadState.TERMINATED
            or upload.owner != principal.id
            or upload.tenant != principal.tenant
        ):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        expires_at = upload.expires_at
        if (
            upload.state == UploadState.ACTIVE
            and expires_at is not None
            and expires_at <= self.clock()
        ):
            raise GatewayError(ERR.UPLOAD_GONE, "this upload expired and is being removed")
        return upload

    async def open_metadata(self, upload: Upload) -> str | None:
        """The Upload-Metadata header exactly as the client sent it, or None."""
        if upload.legacy_metadata is not None:
            return upload.legacy_metadata  # a row from before sealing; sealed at next start
        if upload.metadata is None:
            return None
        wrapped = await self.runner.db(self.catalog.wrapped_key, upload.dek_id)
        # On the event loop, as a write's unwrap is: ~0.1 ms, less than a thread hop.
        try:
            return open_metadata(self._sealer(upload, wrapped), upload.metadata)
        except InvalidSealedData as exc:
            raise GatewayError(
                ERR.STORED_DATA_CORRUPT, "the upload's metadata failed authentication"
            ) from exc

    def _sealer(self, upload: Upload, wrapped: WrappedKey | None) -> Sealer:
        if wrapped is None:
            raise GatewayError(ERR.UPLOAD_GONE, "this upload's key was destroyed")
        try:
            dek = self.keys.unwrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
            return Sealer(dek, Header.decode(upload.header))
        except KeyError_ as exc:
            raise GatewayError(ERR.STORED_DATA_CORRUPT, "the upload's key cannot be used") from exc

    async def signed_manifest(self, upload: Upload) -> str:
        """The signed manifest an authorised reader is served: the reader's view, which
        discloses the plaintext SHA-256 (MANIFEST.md); the stored one where there is no
        other (a final concatenation, or a manifest of version 1). ObjectNotFound if none."""
        if upload.header and not upload.parts:
            wrapped = await self.runner.db(self.catalog.wrapped_key, upload.dek_id)
            sealer = self._sealer(upload, wrapped)
            try:
                return await self.runner.io(open_reader_manifest, self.store, upload.id, sealer)
            except ObjectNotFound:
                pass
            except InvalidSealedData as exc:
                raise GatewayError(
                    ERR.STORED_DATA_CORRUPT, "the stored manifest failed verification"
                ) from exc
        _, jws_key = manifest_keys(upload.id)
        return (await self.runner.io(self.store.get, jws_key)).decode("ascii")

    # -- creating -----------------------------------------------------------------------

    def _expiry(self) -> float:
        return self.clock() + self.settings.upload_ttl

    async def create(
        self,
        principal: Principal,
        *,
        length: int | None,
        metadata: str | None,
        partial_concat: str | None = None,
    ) -> Upload:
        """A new upload; `length` None defers it. The data key is born and wrapped here."""
        if length is not None and length > self.settings.max_size:
            raise GatewayError(
                ERR.MAX_SIZE_EXCEEDED,
                f"Upload-Length exceeds this server's Tus-Max-Size of {self.settings.max_size}",
            )
        await self._check_quota(principal, length or 0)
        upload_id = new_upload_id()
        dek, dek_id = os.urandom(32), os.urandom(16)
        header = new_header(
            dek,
            upload_id=upload_id,
            dek_id=dek_id,
            segment_size=self.settings.segment_size,
            plaintext_size=length,
        )
        wrapped = self.keys.wrap(dek, upload_id=upload_id, dek_id=dek_id)
        sealed_metadata = seal_metadata(Sealer(dek, header), metadata)
        multipart_id = await self._store_call(self.store.start_multipart, data_key(upload_id))
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
            expires_at=now + self.settings.upload_ttl,
            segment_size=self.settings.segment_size,
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

    async def _check_quota(self, principal: Principal, length: int) -> None:
        """Refuse a new upload beyond the principal's open uploads or open bytes.

        Checked before the upload is inserted: creations racing each other may pass
        the limit by as many as run at once, never by more.
        """
        most, most_bytes = self.settings.max_open_uploads, self.settings.max_open_bytes
        if not most and not most_bytes:
            return
        count, size = await self.runner.db(
            self.catalog.open_uploads, principal.id, principal.tenant
        )
        if most and count >= most:
            metrics.REFUSED.labels("open-uploads").inc()
            raise GatewayError(
                ERR.QUOTA_EXCEEDED,
                f"this principal has {count} unfinished uploads, the most it may have; "
                "finish or delete some first",
                headers={"Retry-After": "60"},
            )
        if most_bytes and size + length > most_bytes:
            metrics.REFUSED.labels("open-bytes").inc()
            raise GatewayError(
                ERR.QUOTA_EXCEEDED,
                f"this principal's unfinished uploads would pass {most_bytes} bytes; "
                "finish or delete some first",
                headers={"Retry-After": "60"},
            )

    async def create_final(
        self, principal: Principal, *, concat: str, part_ids: list[str], metadata: str | None
    ) -> Upload:
        """A final upload: an ordered list of finished partials, no byte copied."""
        repeated = [p for p, n in collections.Counter(part_ids).items() if n > 1]
        if repeated:
            raise GatewayError(
                ERR.INVALID_CONCAT, f"partial upload {repeated[0]} is listed more than once"
            )
        limit = self.settings.max_concat_parts
        if len(part_ids) > limit:
            raise GatewayError(
                ERR.INVALID_CONCAT,
                f"a final upload may list at most {limit} partials, not {len(part_ids)}",
            )
        parts = []
        for part_id in part_ids:
            try:
                part = await self._owned(principal, part_id)
            except GatewayError as exc:
                raise GatewayError(
                    ERR.INVALID_CONCAT, f"partial upload {part_id} does not exist"
                ) from exc
            if part.concat != "partial":
                raise GatewayError(ERR.INVALID_CONCAT, f"upload {part_id} is not a partial upload")
            if part.state != UploadState.COMPLETE:
                raise GatewayError(
                    ERR.UPLOAD_NOT_FINISHED, f"partial upload {part_id} is not finished"
                )
            parts.append(part)
        length = sum(p.length or 0 for p in parts)
        if length > self.settings.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "the concatenation exceeds Tus-Max-Size")
        # A key and header of its own, for its sealed values only: no object is
        # written under them (the bytes stay in the partials' objects).
        final_id = new_upload_id()
        key = ValueKey.new(
            self.keys, upload_id=final_id, length=length, segment_size=self.settings.segment_size
        )
        now = self.clock()
        final = Upload(
            id=final_id,
            owner=principal.id,
            tenant=principal.tenant,
            length=length,
            offset=length,
            metadata=seal_metadata(key.sealer, metadata),
            state=UploadState.COMPLETE,
            created_at=now,
            expires_at=None,
            segment_size=self.settings.segment_size,
            header=key.header.encode(),
            dek_id=key.header.dek_id,
            concat=concat,
            parts=tuple(p.id for p in parts),
            completed_at=now,
        )
        # Signed before the final exists: a final is never visible without its proof.
        await self.runner.io(
            write_concat_manifest,
            store=self.store,
            signing=self.keys.signing_key(),
            final=final,
            parts=parts,
        )
        await self.runner.db(self.catalog.create_upload, final, key.wrapped)
        metrics.UPLOADS_CREATED.inc()
        metrics.UPLOADS_FINISHED.inc()
        return final

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
            limit = self.settings.max_size if upload.length is None else upload.length
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
                sealer=self._sealer(upload, wrapped),
                store=self.store,
                catalog=self.catalog,
                runner=self.runner,
                control=control,
                checksum=checksum,
                limit=limit,
                depth=self.settings.pipeline_depth,
                expires_at=self._expiry,
                clock=self.clock,
                content_length=content_length,
                running_hash=self._hashes.pop(upload_id, None),
                on_complete=self._finalize,
                pools=self._pools,
                slices=self._slices,
                merge_after=self.settings.tail_merge_after,
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
                except BodyInterrupted:
                    writer.interrupted = True
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

    async def _finalize(
        self, upload: Upload, records: list[RecordRow], plaintext_sha256: bytes | None
    ) -> None:
        """Sign and store the manifest, between object completion and the catalog's 'complete'."""
        wrapped = await self.runner.db(self.catalog.wrapped_key, upload.dek_id)
        if wrapped is None:
            raise GatewayError(ERR.UPLOAD_GONE, "this upload's key was destroyed")
        sealer = self._sealer(upload, wrapped)
        # The client's checksum was recorded by this request or, before a crash, an earlier one.
        recorded = await self.runner.db(self.catalog.get_upload, upload.id)
        client_checksum = None
        if recorded is not None and recorded.checksum is not None:
            try:
                client_checksum = sealer.open_value(SEALED_NAME, recorded.checksum).decode()
            except InvalidSealedData as exc:
                raise GatewayError(
                    ERR.STORED_DATA_CORRUPT, "the recorded client checksum failed verification"
                ) from exc
        if plaintext_sha256 is None:
            # The running hash was lost (a restart, or the upload moved to another
            # process between requests): read the sealed records back once.
            plaintext_sha256 = await self.runner.io(plaintext_digest, self.reader, upload)
        await self.runner.io(
            write_manifest,
            store=self.store,
            store_name="s3" if self.settings.uses_s3 else "folder",
            signing=self.keys.signing_key(),
            upload=upload,
            records=records,
            wrapped=wrapped,
            sealer=sealer,
            plaintext_sha256=plaintext_sha256,
            client_checksum=client_checksum,
            completed_at=self.clock(),
        )
        metrics.UPLOADS_FINISHED.inc()
        log.info("upload finished", extra={"upload_id": upload.id, "length": upload.length})

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
        if length > self.settings.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "Upload-Length exceeds Tus-Max-Size")
        await self.runner.db(self.catalog.set_length, upload.id, length)
        return replace(upload, length=length)

    # -- removing -----------------------------------------------------------------------

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        found = await self.runner.db(self.catalog.get_upload, upload_id)
        if found is not None and await self._removal_pending(principal, found):
            # An earlier DELETE could not shred the key yet (503): finish it now.
            upload = found
            await self._finish_removal(upload_id)
        else:
            upload = self._check_owned(principal, found)
            async with self.leases.held(upload_id):  # stops a writer that is still running
                users = await self.runner.db(self.catalog.finals_using, upload_id)
                if upload.concat == "partial" and users:
                    # A final concatenation reads this partial's bytes: hide it from the
                    # client now, remove it when the last final using it goes.
                    await self.runner.db(self.catalog.retire, upload_id)
                else:
                    await self._remove(upload)
        for part_id in upload.parts:
            await self._remove_if_retired(part_id)
        metrics.UPLOADS_TERMINATED.inc()
        log.info("upload terminated", extra={"upload_id": upload_id, "principal": principal.id})

    async def _remove(self, upload: Upload, shred_wait: float = SHRED_WAIT) -> None:
        """Objects first, then the key (crypto-shredding), then the rows."""
        if (
            upload.header
            and upload.multipart_id is not None
            and upload.state != UploadState.COMPLETE
        ):
            await self._store_call(
                self.store.abort_multipart, data_key(upload.id), upload.multipart_id
            )
        # Everything under U/: data, tails, manifests (a final has only its manifest).
        await self._store_call(self.store.delete_prefix, upload_prefix(upload.id))
        await self.runner.db(self.catalog.terminate, upload.id)
        await self._finish_removal(upload.id, shred_wait)

    async def _finish_removal(self, upload_id: str, wait: float = SHRED_WAIT) -> None:
        """Shred the deleted key's bytes, then forget the rows.

        A reader holding an old snapshot of the catalog keeps the key's bytes needed;
        after `wait` this answers 503. The upload stays terminated without a key (never
        readable again), which marks the removal unfinished: a DELETE again or the
        reaper finishes it.
        """
        deadline = time.monotonic() + wait
        pause = 0.01
        # In the storage pool: searching a large catalog file takes a while, and the
        # catalog thread must not wait for it.
        while not await self.runner.io(self.catalog.shred, upload_id):
            if time.monotonic() >= deadline:
                log.warning(
                    "key shredding postponed: the catalog is being read",
                    extra={"upload_id": upload_id},
                )
                raise GatewayError(
                    ERR.KEY_SHRED_PENDING,
                    "the upload is deleted, but erasing its key must wait for a reader of "
                    "the catalog; repeat the DELETE later",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.25)
        await self.runner.db(self.catalog.forget, upload_id)

    async def _removal_pending(self, principal: Principal, upload: Upload) -> bool:
        """Whether `upload` is principal's and terminated with its key already deleted
        (a retired partial keeps its key and stays hidden)."""
        return (
            upload.state == UploadState.TERMINATED
            and upload.owner == principal.id
            and upload.tenant == principal.tenant
            and await self.runner.db(self.catalog.wrapped_key, upload.dek_id) is None
        )

    async def _remove_if_retired(self, part_id: str) -> None:
        part = await self.runner.db(self.catalog.get_upload, part_id)
        if part is None or part.state != UploadState.TERMINATED:
            return
        if not await self.runner.db(self.catalog.finals_using, part_id):
            await self._remove(part)

    async def reap_once(self) -> int:
        """Remove unfinished uploads whose expiry has passed. Returns how many."""
        removed = 0
        for upload_id in await self.runner.db(self.catalog.removals_pending):
            with contextlib.suppress(GatewayError):  # the catalog is still being read
                await self._finish_removal(upload_id, wait=0)
        for upload_id in await self.runner.db(self.catalog.expired, self.clock()):
            upload = await self.runner.db(self.catalog.get_upload, upload_id)
            if upload is None:
                continue
            try:
                async with self.leases.held(upload_id):
                    await self._remove(upload, shred_wait=0)
                removed += 1
                metrics.REAPED.labels("expired").inc()
                log.info("expired upload removed", extra={"upload_id": upload_id})
            except GatewayError:
                continue  # busy: someone is writing it after all
        return removed

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")

    async def _store_call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await self.runner.io(fn, *args)
        except StoreUnavailable as exc:
            raise GatewayError(
                ERR.STORE_UNAVAILABLE,
                "object storage is unavailable; try again later",
                headers={"Retry-After": "5"},
            ) from exc
