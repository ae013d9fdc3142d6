"""Removing uploads: a client's DELETE, `gateway delete`, the reaper of expired ones and
of those past retention, retired partials; each removal ends with a signed receipt."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from gateway import audit, metrics
from gateway.auditing import Audit
from gateway.catalog.base import (
    Deletion,
    Principal,
    RemovalCatalog,
    StoredReceipt,
    Upload,
    UploadCatalog,
    UploadHeld,
    UploadState,
)
from gateway.errors import ERR, GatewayError
from gateway.layout import data_key, manifest_keys, upload_prefix
from gateway.leases import Leases
from gateway.rules import UploadRules, check_owned, store_call
from gateway.runner import Runner
from gateway.store.base import ObjectNotFound, ObjectStore

log = logging.getLogger("gateway.removal")

DAY = 86400.0


class RemovingCatalog(UploadCatalog, RemovalCatalog, Protocol):
    """What `Removal` uses: uploads as recorded, and their removal."""


class ReceiptSigner(Protocol):
    """Signs a finished removal's receipt (gateway/receipts.py: `Receipts`); blocking."""

    def issue(self, deletion: Deletion, *, deleted_at: float) -> str: ...


class Removal:
    """Crypto-shredding first, then the objects, then the rows and the receipt.

    The wrapped data key is deleted (with the upload marked terminated, in one catalog
    transaction) and made unrecoverable from the catalog's files; only then are the
    objects deleted: from the moment the key is gone nothing stored can be read, so a
    store that fails halfway leaves nothing readable behind. An upload terminated
    without its key is an unfinished removal, which a repeated DELETE or the reaper
    finishes. A partial upload that a final concatenation still reads is retired
    instead: hidden from its client, removed when the last final using it goes. A held
    upload (legal hold) is never touched.
    """

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: RemovingCatalog,
        runner: Runner,
        leases: Leases,
        receipts: ReceiptSigner,
        audit: Audit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._store = store
        self._catalog = catalog
        self._runner = runner
        self._leases = leases
        self._receipts = receipts
        self._audit = audit
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

    # -- a client's DELETE, an admin's delete -------------------------------------------

    async def terminate(self, principal: Principal, upload_id: str) -> str | None:
        """Remove the upload; its receipt (compact JWS), or None for a retired partial."""
        found = await self._runner.db(self._catalog.get_upload, upload_id)
        if found is not None and await self._removal_pending(found, principal):
            # An earlier DELETE could not finish (503): finish it now.
            receipt: str | None = await self._finish_removal(upload_id)
            upload = found
        else:
            if found is not None and found.held and _owns(principal, found):
                raise _on_hold()  # also past its expiry: the hold keeps it
            upload = check_owned(principal, found, self._clock())
            by = {"principal": principal.id, "tenant": principal.tenant}
            receipt = await self._delete_under_lease(upload, by, "client")
        await self._after(upload)
        metrics.UPLOADS_TERMINATED.inc()
        log.info("upload terminated", extra={"upload_id": upload_id, "principal": principal.id})
        return receipt

    async def delete_as_admin(self, admin: str, upload_id: str) -> str | None:
        """`gateway delete`: any owner's upload; its receipt, or None for a retired partial."""
        found = await self._runner.db(self._catalog.get_upload, upload_id)
        tenant = found.tenant if found is not None else None
        try:
            receipt = await self._delete_as_admin(admin, upload_id)
        except GatewayError as exc:
            outcome = audit.FAILED if exc.status >= 500 else audit.REFUSED
            await self._record(
                audit.UPLOAD_DELETED, admin, upload_id, tenant, "admin", outcome, exc.code
            )
            raise
        await self._record(audit.UPLOAD_DELETED, admin, upload_id, tenant, "admin")
        return receipt

    async def _delete_as_admin(self, admin: str, upload_id: str) -> str | None:
        found = await self._runner.db(self._catalog.get_upload, upload_id)
        if found is not None and await self._removal_pending(found):
            receipt: str | None = await self._finish_removal(upload_id)
        elif found is None or found.state == UploadState.TERMINATED:
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        else:
            receipt = await self._delete_under_lease(found, {"admin": admin}, "admin")
        await self._after(found)
        log.info("upload deleted by an admin", extra={"upload_id": upload_id, "admin": admin})
        return receipt

    async def _delete_under_lease(
        self, upload: Upload, by: Mapping[str, str], reason: str, *, wait: float | None = None
    ) -> str | None:
        _refuse_held(upload)
        async with self._leases.held(upload.id):  # stops a writer that is still running
            # As the writer left it (it may have completed the upload meanwhile).
            found = await self._runner.db(self._catalog.get_upload, upload.id)
            if found is None or found.state == UploadState.TERMINATED:
                raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
            upload = found
            users = await self._runner.db(self._catalog.finals_using, upload.id)
            if upload.concat == "partial" and users:
                # A final concatenation reads this partial's bytes: hide it from the
                # client now, remove it when the last final using it goes.
                await self._catalog_call(self._catalog.retire, upload.id)
                return None
            return await self._remove(upload, by, reason, shred_wait=wait)

    async def _after(self, upload: Upload) -> None:
        for partial_id in upload.partials:
            await self._remove_if_retired(partial_id)

    async def _removal_pending(self, upload: Upload, principal: Principal | None = None) -> bool:
        """Whether `upload` is terminated with its key already deleted (a retired
        partial keeps its key and stays hidden), and principal's if one is given."""
        return (
            upload.state == UploadState.TERMINATED
            and (principal is None or _owns(principal, upload))
            and await self._runner.db(self._catalog.wrapped_key, upload.dek_id) is None
        )

    async def _remove_if_retired(self, partial_id: str) -> None:
        partial = await self._runner.db(self._catalog.get_upload, partial_id)
        if partial is None or partial.state != UploadState.TERMINATED:
            return
        if await self._removal_pending(partial):
            return  # already on its way out (the reaper finishes it)
        if not await self._runner.db(self._catalog.finals_using, partial_id):
            by = {"principal": partial.owner, "tenant": partial.tenant}
            await self._remove(partial, by, "client")

    # -- removing -----------------------------------------------------------------------

    async def _remove(
        self, upload: Upload, by: Mapping[str, str], reason: str, shred_wait: float | None = None
    ) -> str:
        """Delete and shred the key, then the objects, then the rows; the receipt."""
        wrapped = await self._runner.db(self._catalog.wrapped_key, upload.dek_id)
        deletion = Deletion(
            upload_id=upload.id,
            requested_at=self._clock(),
            reason=reason,
            deleted_by=dict(by),
            manifest_sha256=await self._manifest_digest(upload),
            dek_id=upload.dek_id,
            kek_id=wrapped.kek_id if wrapped is not None else None,
            kek_version=wrapped.kek_version if wrapped is not None else None,
        )
        await self._catalog_call(self._catalog.terminate, upload.id, deletion)
        return await self._finish_removal(upload.id, shred_wait)

    async def _manifest_digest(self, upload: Upload) -> str | None:
        """SHA-256 of the stored signed manifest of a complete upload (the receipt pins
        it), read before anything is deleted; None for an unfinished one."""
        if upload.completed_at is None:
            return None
        _, jws_key = manifest_keys(upload.id)
        try:
            signed = await store_call(self._runner, self._store.get, jws_key)
        except ObjectNotFound:
            return None  # completed before manifests were signed
        return hashlib.sha256(signed).hexdigest()

    async def _finish_removal(self, upload_id: str, wait: float | None = None) -> str:
        """Shred the deleted key's bytes, delete the objects, forget the rows and keep
        the signed receipt; returns the receipt.

        A reader holding an old snapshot of the catalog keeps the key's bytes needed;
        after `wait` (default: the rules' shred_wait) this answers 503. A store that
        fails answers 503 too. Either way the upload stays terminated without a key
        (never readable again), which marks the removal unfinished: a DELETE again or
        the reaper finishes it.
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
        upload = await self._runner.db(self._catalog.get_upload, upload_id)
        if upload is not None:
            await self._delete_objects(upload)
        deletion = await self._runner.db(self._catalog.deletion, upload_id)
        if deletion is None:  # terminated before receipts existed
            deletion = _unrecorded(upload_id, upload, self._clock())
        deleted_at = self._clock()
        jws = await self._runner.io(self._receipts.issue, deletion, deleted_at=deleted_at)
        receipt = StoredReceipt(upload_id=upload_id, issued_at=deleted_at, jws=jws)
        await self._runner.db(self._catalog.forget, upload_id, receipt)
        return jws

    async def _delete_objects(self, upload: Upload) -> None:
        if upload.header and upload.multipart_id is not None and upload.completed_at is None:
            await store_call(
                self._runner, self._store.abort_multipart, data_key(upload.id), upload.multipart_id
            )
        # Everything under U/: data, tails, manifests (a final has only its manifest).
        await store_call(self._runner, self._store.delete_prefix, upload_prefix(upload.id))

    async def _catalog_call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            await self._runner.db(fn, *args)
        except UploadHeld:
            raise _on_hold() from None

    # -- the reaper ---------------------------------------------------------------------

    async def reap_once(self) -> int:
        """Finish removals cut short, remove unfinished uploads whose expiry has passed
        and complete ones past retention. Returns how many uploads it removed."""
        for upload_id in await self._runner.db(self._catalog.removals_pending):
            with contextlib.suppress(GatewayError):  # the catalog is read, the store down
                await self._finish_removal(upload_id, wait=0)
        removed = 0
        for upload_id in await self._runner.db(self._catalog.expired, self._clock()):
            if await self._reap(upload_id, "expiry"):
                removed += 1
        days = self._rules.retention_days
        if days is not None:
            before = self._clock() - days * DAY
            due = self._catalog.retention_due
            for upload_id in await self._runner.db(due, before, self._rules.retention_batch):
                if await self._reap(upload_id, "retention"):
                    removed += 1
        return removed

    async def _reap(self, upload_id: str, reason: str) -> bool:
        upload = await self._runner.db(self._catalog.get_upload, upload_id)
        if upload is None or upload.held:
            return False
        try:
            receipt = await self._delete_under_lease(upload, {"reaper": reason}, reason, wait=0)
            await self._after(upload)
        except GatewayError:
            return False  # busy, held meanwhile, or cut short: the next pass sees it
        if receipt is None:
            log.info("partial retired", extra={"upload_id": upload_id, "reason": reason})
            return False
        action = audit.UPLOAD_EXPIRED if reason == "expiry" else audit.UPLOAD_RETENTION_ENDED
        await self._record(action, "reaper", upload_id, upload.tenant, reason)
        # "expired" is the label dashboards already know for expiry.
        metrics.REAPED.labels("expired" if reason == "expiry" else reason).inc()
        log.info("upload removed", extra={"upload_id": upload_id, "reason": reason})
        return True

    async def _record(
        self,
        action: str,
        by: str,
        upload_id: str,
        upload_tenant: str | None,
        reason: str,
        outcome: str = audit.OK,
        code: str | None = None,
    ) -> None:
        if self._audit is not None:
            await self._audit.record(
                action,
                audit.Actor(by),
                upload_id,
                outcome=outcome,
                code=code,
                details={"reason": reason},
                upload_tenant=upload_tenant,
            )

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rules.reap_interval)
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")


def _owns(principal: Principal, upload: Upload) -> bool:
    return upload.owner == principal.id and upload.tenant == principal.tenant


def _refuse_held(upload: Upload) -> None:
    if upload.held:
        raise _on_hold()


def _on_hold() -> GatewayError:
    return GatewayError(
        ERR.UPLOAD_ON_HOLD, "the upload is under a legal hold; it cannot be deleted until released"
    )


def _unrecorded(upload_id: str, upload: Upload | None, now: float) -> Deletion:
    """A receipt's facts for a removal begun before they were recorded: who asked is
    not known, the key is gone already."""
    return Deletion(
        upload_id=upload_id,
        requested_at=now,
        reason="unrecorded",
        deleted_by={"reaper": "unrecorded"},
        manifest_sha256=None,
        dek_id=upload.dek_id if upload is not None else b"",
        kek_id=None,
        kek_version=None,
    )
