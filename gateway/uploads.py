"""The uploads service: create and inspect uploads, hand on the rest. No HTTP here."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from gateway import metrics
from gateway.catalog.base import (
    LegacyMetadataCatalog,
    Principal,
    RemovalCatalog,
    Upload,
    UploadCatalog,
    UploadState,
)
from gateway.errors import ERR, GatewayError
from gateway.finals import Finals
from gateway.hooks.precreate import PreCreateHook
from gateway.keys.base import KeyProvider
from gateway.layout import data_key
from gateway.leases import Leases
from gateway.metadata import seal_legacy_metadata, seal_metadata
from gateway.removal import Removal
from gateway.rules import UploadRules, check_live, check_owned, check_quota, store_call
from gateway.runner import Runner
from gateway.sealed import Sealer, new_header
from gateway.store.base import ObjectStore
from gateway.suites import new_dek
from gateway.tus.headers import ChecksumHeader, new_upload_id
from gateway.upload_keys import UploadKeys
from gateway.writer import Outcome
from gateway.writes import Writes

log = logging.getLogger("gateway.uploads")
# What this service supports, in the order tus clients expect to read it.
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
    "concatenation-unfinished",
)


class UploadsCatalog(UploadCatalog, LegacyMetadataCatalog, RemovalCatalog, Protocol):
    """What `Uploads` reads and writes: uploads, the legacy metadata it seals at start,
    and which finals list a partial (`finals_using`)."""


async def empty_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class Uploads:
    """The service the tus handler calls. Writing (PATCH), removal, final
    concatenations and an upload's key at work (metadata, manifests) are services of
    their own (`gateway.writes`, `gateway.removal`, `gateway.finals`,
    `gateway.upload_keys`); this hands their calls on.

    Every collaborator is built by the app factory and passed in.
    """

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: UploadsCatalog,
        keys: KeyProvider,
        runner: Runner,
        leases: Leases,
        upload_keys: UploadKeys,
        writes: Writes,
        removal: Removal,
        finals: Finals,
        pre_create: PreCreateHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.store = store
        self.catalog = catalog
        self.keys = keys
        self.runner = runner
        self.leases = leases
        self.upload_keys = upload_keys
        self.writes = writes
        self.removal = removal
        self.finals = finals
        self.pre_create = pre_create  # asked before anything of an upload is stored
        self.clock = clock

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

    async def readable(self, upload: Upload) -> Upload:
        """`upload`, which the access policy lets someone read (gateway/grants.py), as
        `get` gives it: 410 once expired unfinished, a crash-cut completion finished (on
        its owner's behalf: a reader may not be the owner)."""
        upload = check_live(upload, self.clock())
        return await self._finish_cut(Principal(upload.owner, upload.tenant), upload)

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
        if upload.partials:
            # An unfinished final completes here if its last partial's request did not
            # get to it (a crash, another process holding it).
            return (
                await self._settle_final(upload) if upload.state == UploadState.ACTIVE else upload
            )
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
                await self.settle_finals_of(upload)
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
        if self.pre_create is not None:
            await self.pre_create.check(
                principal, length=length, metadata=metadata, concat=partial_concat
            )
        upload_id = new_upload_id()
        dek, dek_id = new_dek(self.rules.suite), os.urandom(16)
        header = new_header(
            dek,
            upload_id=upload_id,
            dek_id=dek_id,
            segment_size=self.rules.segment_size,
            plaintext_size=length,
            suite=self.rules.suite,
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
        """Append `body` at `offset` (see `Writes.write`)."""
        return await self.writes.write(
            principal,
            upload_id,
            offset=offset,
            body=body,
            length=length,
            checksum=checksum,
            content_length=content_length,
            acquire_wait=acquire_wait,
        )

    # -- handed on ----------------------------------------------------------------------

    async def create_final(
        self, principal: Principal, *, concat: str, partial_ids: list[str], metadata: str | None
    ) -> Upload:
        """A final upload: an ordered list of partials, no byte copied; complete at once
        if they all are, else when the last one completes (`settle_finals_of`)."""
        if self.pre_create is not None:
            await self.pre_create.check(principal, length=None, metadata=metadata, concat=concat)
        final = await self.finals.create(
            principal, concat=concat, partial_ids=partial_ids, metadata=metadata
        )
        if final.state == UploadState.ACTIVE:
            # A partial may have completed since it was read, before this final existed.
            with contextlib.suppress(GatewayError):  # its HEAD says what went wrong
                final = await self._settle_final(final)
        return final

    async def settle_finals_of(self, partial: Upload) -> list[Upload]:
        """After `partial` completed: complete the unfinished finals listing it whose
        partials are now all complete; the finals completed. Never raises for a final:
        one left unfinished is completed by its next HEAD or GET."""
        if partial.concat != "partial" or partial.state != UploadState.COMPLETE:
            return []
        done = []
        for final_id in await self.runner.db(self.catalog.finals_using, partial.id):
            final = await self.runner.db(self.catalog.get_upload, final_id)
            if final is None or final.state != UploadState.ACTIVE:
                continue
            try:
                settled = await self._settle_final(final)
            except GatewayError as exc:
                log.info("final not settled", extra={"upload_id": final_id, "error_code": exc.code})
                continue
            if settled.state == UploadState.COMPLETE:
                done.append(settled)
        return done

    async def _settle_final(self, final: Upload) -> Upload:
        """`Finals.settle` under the final's lease (taken from whoever holds it); the
        final as it was if the lease cannot be had now (someone is settling it)."""
        load = functools.partial(self.catalog.get_upload, final.id)
        try:
            async with self.leases.held(final.id, load=load) as control:
                loaded = control.loaded
                if not isinstance(loaded, Upload) or loaded.state != UploadState.ACTIVE:
                    return loaded if isinstance(loaded, Upload) else final
                return await self.finals.settle(loaded, control.lease)
        except GatewayError as exc:
            if exc.err not in (ERR.UPLOAD_LOCKED, ERR.SERVER_BUSY):
                raise
            return final

    async def terminate(self, principal: Principal, upload_id: str) -> str | None:
        """Remove the upload (tus termination); its deletion receipt (compact JWS), or
        None for a partial a final still reads, which is retired instead."""
        try:
            return await self.removal.terminate(principal, upload_id)
        finally:
            self.upload_keys.forget(upload_id)  # its key leaves memory too

    async def reap_once(self) -> int:
        """Remove unfinished uploads whose expiry has passed. Returns how many."""
        return await self.removal.reap_once()
