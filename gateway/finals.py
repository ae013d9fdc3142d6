"""Final uploads of the concatenation extension: an ordered list of finished partials."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from gateway import metrics
from gateway.catalog.base import Principal, Upload, UploadCatalog, UploadState
from gateway.errors import ERR, GatewayError
from gateway.hooks.events import CompletionEvents
from gateway.keys.base import KeyProvider
from gateway.metadata import ValueKey, seal_metadata
from gateway.rules import UploadRules, check_owned
from gateway.runner import Runner
from gateway.signer import write_concat_manifest
from gateway.store.base import ObjectStore
from gateway.tus.headers import new_upload_id


class Finals:
    """Assembles final uploads: no byte is copied, the bytes stay in the partials' objects,
    and a signed manifest pins each partial's own manifest."""

    def __init__(
        self,
        rules: UploadRules,
        *,
        store: ObjectStore,
        catalog: UploadCatalog,
        keys: KeyProvider,
        runner: Runner,
        events: CompletionEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._store = store
        self._catalog = catalog
        self._keys = keys
        self._runner = runner
        self._events = events  # None: no hook is told of completions
        self._clock = clock

    async def create(
        self, principal: Principal, *, concat: str, partial_ids: list[str], metadata: str | None
    ) -> Upload:
        """A final upload of `partial_ids`, in order; `concat` is the Upload-Concat value."""
        repeated = [p for p, n in collections.Counter(partial_ids).items() if n > 1]
        if repeated:
            raise GatewayError(
                ERR.INVALID_CONCAT, f"partial upload {repeated[0]} is listed more than once"
            )
        limit = self._rules.max_partials
        if len(partial_ids) > limit:
            raise GatewayError(
                ERR.INVALID_CONCAT,
                f"a final upload may list at most {limit} partials, not {len(partial_ids)}",
            )
        partials = [await self._finished_partial(principal, p) for p in partial_ids]
        length = sum(p.length or 0 for p in partials)
        if length > self._rules.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "the concatenation exceeds Tus-Max-Size")
        # A key and header of its own, for its sealed values only: no object is
        # written under them (the bytes stay in the partials' objects).
        final_id = new_upload_id()
        segment_size = self._rules.segment_size
        key = ValueKey.new(self._keys, upload_id=final_id, length=length, segment_size=segment_size)
        now = self._clock()
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
            segment_size=segment_size,
            header=key.header.encode(),
            dek_id=key.header.dek_id,
            concat=concat,
            partials=tuple(p.id for p in partials),
            completed_at=now,
        )
        # Signed before the final exists: a final is never visible without its proof.
        jws = await self._runner.io(
            write_concat_manifest,
            store=self._store,
            signing=self._keys.signing_key(),
            final=final,
            partials=partials,
        )
        # Created complete: its notification enters the outbox with its row.
        event = None if self._events is None else self._events.completed(final, jws, now)
        await self._runner.db(self._catalog.create_upload, final, key.wrapped, event)
        metrics.UPLOADS_CREATED.inc()
        metrics.UPLOADS_FINISHED.inc()
        return final

    async def _finished_partial(self, principal: Principal, partial_id: str) -> Upload:
        found = await self._runner.db(self._catalog.get_upload, partial_id)
        try:
            partial = check_owned(principal, found, self._clock())
        except GatewayError as exc:
            raise GatewayError(
                ERR.INVALID_CONCAT, f"partial upload {partial_id} does not exist"
            ) from exc
        if partial.concat != "partial":
            raise GatewayError(ERR.INVALID_CONCAT, f"upload {partial_id} is not a partial upload")
        if partial.state != UploadState.COMPLETE:
            raise GatewayError(
                ERR.UPLOAD_NOT_FINISHED, f"partial upload {partial_id} is not finished"
            )
        return partial
