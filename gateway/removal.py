"""Removing uploads: a client's DELETE, the reaper of expired ones, retired partials."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway import metrics
from gateway.catalog.base import Principal, RemovalCatalog, Upload, UploadCatalog, UploadState
from gateway.errors import ERR, GatewayError
from gateway.layout import data_key, upload_prefix
from gateway.leases import Leases
from gateway.rules import UploadRules, check_owned, store_call
from gateway.runner import Runner
from gateway.store.base import ObjectStore

log = logging.getLogger("gateway.removal")


class RemovingCatalog(UploadCatalog, RemovalCatalog, Protocol):
    """What `Removal` uses: uploads as recorded, and their removal."""


class Removal:
    """Objects first, then the key (crypto-shredding), then the rows.

    A partial upload that a final concatenation still reads is retired instead: hidden
    from its client, removed when the last final using it goes.
    """

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: RemovingCatalog,
        runner: Runner,
        leases: Leases,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._store = store
        self._catalog = catalog
        self._runner = runner
        self._leases = leases
        self._clock = clock
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the reaper every `reap_interval` seconds until `close`."""
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    # -- a client's DELETE --------------------------------------------------------------

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        found = await self._runner.db(self._catalog.get_upload, upload_id)
        if found is not None and await self._removal_pending(principal, found):
            # An earlier DELETE could not shred the key yet (503): finish it now.
            upload = found
            await self._finish_removal(upload_id)
        else:
            upload = check_owned(principal, found, self._clock())
            async with self._leases.held(upload_id):  # stops a writer that is still running
                users = await self._runner.db(self._catalog.finals_using, upload_id)
                if upload.concat == "partial" and users:
                    # A final concatenation reads this partial's bytes: hide it from the
                    # client now, remove it when the last final using it goes.
                    await self._runner.db(self._catalog.retire, upload_id)
                else:
                    await self._remove(upload)
        for partial_id in upload.partials:
            await self._remove_if_retired(partial_id)
        metrics.UPLOADS_TERMINATED.inc()
        log.info("upload terminated", extra={"upload_id": upload_id, "principal": principal.id})

    async def _removal_pending(self, principal: Principal, upload: Upload) -> bool:
        """Whether `upload` is principal's and terminated with its key already deleted
        (a retired partial keeps its key and stays hidden)."""
        return (
            upload.state == UploadState.TERMINATED
            and upload.owner == principal.id
            and upload.tenant == principal.tenant
            and await self._runner.db(self._catalog.wrapped_key, upload.dek_id) is None
        )

    async def _remove_if_retired(self, partial_id: str) -> None:
        partial = await self._runner.db(self._catalog.get_upload, partial_id)
        if partial is None or partial.state != UploadState.TERMINATED:
            return
        if not await self._runner.db(self._catalog.finals_using, partial_id):
            await self._remove(partial)

    # -- removing -----------------------------------------------------------------------

    async def _remove(self, upload: Upload, shred_wait: float | None = None) -> None:
        """Objects first, then the key (crypto-shredding), then the rows."""
        if (
            upload.header
            and upload.multipart_id is not None
            and upload.state != UploadState.COMPLETE
        ):
            await store_call(
                self._runner, self._store.abort_multipart, data_key(upload.id), upload.multipart_id
            )
        # Everything under U/: data, tails, manifests (a final has only its manifest).
        await store_call(self._runner, self._store.delete_prefix, upload_prefix(upload.id))
        await self._runner.db(self._catalog.terminate, upload.id)
        await self._finish_removal(upload.id, shred_wait)

    async def _finish_removal(self, upload_id: str, wait: float | None = None) -> None:
        """Shred the deleted key's bytes, then forget the rows.

        A reader holding an old snapshot of the catalog keeps the key's bytes needed;
        after `wait` (default: the rules' shred_wait) this answers 503. The upload stays
        terminated without a key (never readable again), which marks the removal
        unfinished: a DELETE again or the reaper finishes it.
        """
        deadline = time.monotonic() + (self._rules.shred_wait if wait is None else wait)
        pause = 0.01
        # In the storage pool: searching a large catalog file takes a while, and the
        # catalog thread must not wait for it.
        while not await self._runner.io(self._catalog.shred, upload_id):
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
        await self._runner.db(self._catalog.forget, upload_id)

    # -- the reaper ---------------------------------------------------------------------

    async def reap_once(self) -> int:
        """Remove unfinished uploads whose expiry has passed. Returns how many."""
        removed = 0
        for upload_id in await self._runner.db(self._catalog.removals_pending):
            with contextlib.suppress(GatewayError):  # the catalog is still being read
                await self._finish_removal(upload_id, wait=0)
        for upload_id in await self._runner.db(self._catalog.expired, self._clock()):
            upload = await self._runner.db(self._catalog.get_upload, upload_id)
            if upload is None:
                continue
            try:
                async with self._leases.held(upload_id):
                    await self._remove(upload, shred_wait=0)
                removed += 1
                metrics.REAPED.labels("expired").inc()
                log.info("expired upload removed", extra={"upload_id": upload_id})
            except GatewayError:
                continue  # busy: someone is writing it after all
        return removed

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rules.reap_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")
