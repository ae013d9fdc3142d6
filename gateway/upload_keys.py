"""What an upload's data key opens and signs outside the body: metadata and manifests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway import metrics
from gateway.catalog.base import HookEvent, RecordRow, Upload, UploadCatalog
from gateway.checksums import SEALED_NAME
from gateway.errors import ERR, GatewayError
from gateway.hooks.events import CompletionEvents
from gateway.keys.base import KeyProvider, KeyUnusable, WrappedKey
from gateway.layout import manifest_keys
from gateway.metadata import open_metadata
from gateway.reader import Reader
from gateway.runner import Runner
from gateway.sealed import Header, InvalidSealedData, Sealer
from gateway.signer import open_reader_manifest, open_reader_sm2, rfc3339, write_manifest
from gateway.store.base import ObjectNotFound, ObjectStore

log = logging.getLogger("gateway.uploads")

# A writing upload's unwrapped key (its `Sealer`) is kept this long after its last PATCH,
# so the next chunk of a chunked client skips the unwrap and the key derivations.
KEEP_KEY_FOR = 30.0  # seconds
KEYS_KEPT = 1024  # at most this many uploads' keys at once; the least recently used go


@dataclass(frozen=True)
class _Kept:
    wrapped: WrappedKey  # what it was unwrapped from: a rewrapped or shredded key misses
    header: bytes
    sealer: Sealer
    used: float  # monotonic


class UploadKeys:
    """Unwraps an upload's data key into a `Sealer`, opens its sealed metadata, signs its
    manifest as it completes, and serves the signed manifest to its reader."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        catalog: UploadCatalog,
        keys: KeyProvider,
        runner: Runner,
        reader: Reader,
        store_name: str,
        retention_days: int | None = None,
        events: CompletionEvents | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._keys = keys
        self._runner = runner
        self._reader = reader
        self._store_name = store_name  # "folder" or "s3", as the manifest names it
        self._retention_days = retention_days
        self._events = events  # None: no hook is told of completions
        self._clock = clock
        self._monotonic = monotonic
        # Writing uploads' sealers, least recently used first: process memory only.
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._expiry: asyncio.TimerHandle | None = None

    def writing_sealer(self, upload: Upload, wrapped: WrappedKey | None) -> Sealer:
        """`sealer`, kept for the upload's next PATCH for KEEP_KEY_FOR seconds.

        `wrapped` is what the catalog holds now, read with the lease: the kept sealer
        serves only while it is the very key it was unwrapped from, so a shredded
        (None) or rewrapped key is never answered from memory.
        """
        now = self._monotonic()
        self._drop_expired(now)
        kept = self._kept.pop(upload.id, None)
        if kept is not None and kept.wrapped == wrapped and kept.header == upload.header:
            sealer = kept.sealer
        else:
            sealer = self.sealer(upload, wrapped)
        assert wrapped is not None  # sealer() refused a shredded key
        self._kept[upload.id] = _Kept(wrapped, upload.header, sealer, now)
        if len(self._kept) > KEYS_KEPT:
            self._kept.popitem(last=False)
        self._expire_later()
        return sealer

    def holds_key(self, upload_id: str) -> bool:
        """Whether the upload's unwrapped key is kept in memory now."""
        return upload_id in self._kept

    def forget(self, upload_id: str) -> None:
        """Drop the upload's kept key (it completed, or was terminated)."""
        self._kept.pop(upload_id, None)

    def _drop_expired(self, now: float) -> None:
        while self._kept:
            oldest = next(iter(self._kept.values()))
            if now - oldest.used < KEEP_KEY_FOR:
                return
            self._kept.popitem(last=False)

    def _expire_later(self) -> None:
        """Drop expired keys on time even if no PATCH comes (on the event loop)."""
        if self._expiry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a command): the keys go with this object
        self._expiry = loop.call_later(KEEP_KEY_FOR, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self._drop_expired(self._monotonic())
        if self._kept:
            self._expire_later()

    def sealer(self, upload: Upload, wrapped: WrappedKey | None) -> Sealer:
        """The upload's sealer from its wrapped key (None: the key was shredded)."""
        if wrapped is None:
            self.forget(upload.id)
            raise GatewayError(ERR.UPLOAD_GONE, "this upload's key was destroyed")
        try:
            dek = self._keys.unwrap(wrapped, upload_id=upload.id, dek_id=upload.dek_id)
            return Sealer(dek, Header.decode(upload.header))
        except KeyUnusable as exc:
            raise GatewayError(ERR.STORED_DATA_CORRUPT, "the upload's key cannot be used") from exc

    async def open_metadata(self, upload: Upload) -> str | None:
        """The Upload-Metadata header exactly as the client sent it, or None."""
        if upload.legacy_metadata is not None:
            return upload.legacy_metadata  # a row from before sealing; sealed at next start
        if upload.metadata is None:
            return None
        wrapped = await self._runner.db(self._catalog.wrapped_key, upload.dek_id)
        # On the event loop, as a write's unwrap is: ~0.1 ms, less than a thread hop.
        try:
            return open_metadata(self.sealer(upload, wrapped), upload.metadata)
        except InvalidSealedData as exc:
            raise GatewayError(
                ERR.STORED_DATA_CORRUPT, "the upload's metadata failed authentication"
            ) from exc

    async def signed_manifest(self, upload: Upload) -> str:
        """The signed manifest an authorised reader is served: the reader's view, which
        discloses the plaintext SHA-256 (MANIFEST.md); the stored one where there is no
        other (a final concatenation, or a manifest of version 1). ObjectNotFound if none."""
        if upload.header and not upload.partials:
            wrapped = await self._runner.db(self._catalog.wrapped_key, upload.dek_id)
            sealer = self.sealer(upload, wrapped)
            try:
                return await self._runner.io(open_reader_manifest, self._store, upload.id, sealer)
            except ObjectNotFound:
                pass
            except InvalidSealedData as exc:
                raise GatewayError(
                    ERR.STORED_DATA_CORRUPT, "the stored manifest failed verification"
                ) from exc
        _, jws_key = manifest_keys(upload.id)
        return (await self._runner.io(self._store.get, jws_key)).decode("ascii")

    async def signed_sm2_manifest(self, upload: Upload) -> str:
        """The SM2 form of a suite-2 upload's reader's manifest (MANIFEST.md, "SM2");
        ObjectNotFound for an upload that has none (another suite, not complete)."""
        if not upload.header or upload.partials:
            raise ObjectNotFound(upload.id)
        wrapped = await self._runner.db(self._catalog.wrapped_key, upload.dek_id)
        sealer = self.sealer(upload, wrapped)
        try:
            return await self._runner.io(open_reader_sm2, self._store, upload.id, sealer)
        except InvalidSealedData as exc:
            raise GatewayError(
                ERR.STORED_DATA_CORRUPT, "the stored manifest failed verification"
            ) from exc

    async def sign_manifest(
        self, upload: Upload, records: list[RecordRow], plaintext_sha256: bytes | None
    ) -> HookEvent | None:
        """Sign and store the manifest, between object completion and the catalog's
        'complete'; the completion's notification, which the catalog records with it."""
        self.forget(upload.id)  # no PATCH follows a completion
        wrapped = await self._runner.db(self._catalog.wrapped_key, upload.dek_id)
        if wrapped is None:
            raise GatewayError(ERR.UPLOAD_GONE, "this upload's key was destroyed")
        sealer = self.sealer(upload, wrapped)
        # The client's checksum was recorded by this request or, before a crash, an earlier one.
        recorded = await self._runner.db(self._catalog.get_upload, upload.id)
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
            plaintext_sha256 = await self._runner.io(self._reader.plaintext_digest, upload)
        completed_at = self._clock()
        stored_jws = await self._runner.io(
            write_manifest,
            store=self._store,
            store_name=self._store_name,
            signing=self._keys.signing_key(),
            sm2_signing=self._keys.sm2_signing_key,  # called for a suite-2 upload only
            upload=upload,
            records=records,
            wrapped=wrapped,
            sealer=sealer,
            plaintext_sha256=plaintext_sha256,
            client_checksum=client_checksum,
            completed_at=completed_at,
            retention=retention(self._retention_days, completed_at),
        )
        metrics.UPLOADS_FINISHED.inc()
        log.info("upload finished", extra={"upload_id": upload.id, "length": upload.length})
        if self._events is None:
            return None
        return self._events.completed(upload, stored_jws, completed_at)


def retention(days: int | None, completed_at: float) -> dict[str, object] | None:
    """The manifest's "retention": how long the upload is kept, and from when it may be
    deleted (the reaper deletes it at its first pass after that); None: kept until deleted."""
    if days is None:
        return None
    return {"days": days, "delete_after": rfc3339(completed_at + days * 86400)}
