"""Final uploads of the concatenation extension: an ordered list of partials, finished
or still being written (concatenation-unfinished)."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

from gateway import metrics
from gateway.catalog.base import Lease, Principal, Progress, Upload, UploadCatalog, UploadState
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
        partials = [await self._live_partial(principal, p) for p in partial_ids]
        lengths = [p.length for p in partials]
        known = None if None in lengths else sum(p.length or 0 for p in partials)
        if known is not None and known > self._rules.max_size:
            raise GatewayError(ERR.MAX_SIZE_EXCEEDED, "the concatenation exceeds Tus-Max-Size")
        finished = all(p.state == UploadState.COMPLETE for p in partials)
        # A key and header of its own, for its sealed values only: no object is
        # written under them (the bytes stay in the partials' objects).
        final_id = new_upload_id()
        segment_size = self._rules.segment_size
        length = known or 0  # an unfinished final's header says 0: it describes no bytes
        key = ValueKey.new(
            self._keys,
            upload_id=final_id,
            length=length,
            segment_size=segment_size,
            suite=self._rules.suite,
        )
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
        if not finished:
            # concatenation-unfinished: active, with no length or offset until the last
            # partial completes (`settle`); it expires like an upload meanwhile.
            final = dataclasses.replace(
                final,
                length=None,
                offset=0,
                state=UploadState.ACTIVE,
                expires_at=now + self._rules.upload_ttl,
                completed_at=None,
            )
            await self._runner.db(self._catalog.create_upload, final, key.wrapped)
            metrics.UPLOADS_CREATED.inc()
            return final
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

    async def settle(self, final: Upload, lease: Lease) -> Upload:
        """An unfinished final (read under `lease`) completed if its partials all are:
        its length set, its manifest signed, then marked complete, so a crash anywhere
        in between leaves it to be settled again. Otherwise its expiry is pushed on and
        it is returned with its length when every partial's is known (not stored).
        A partial that is gone or expired means it can never complete: it expires now
        (410; the reaper removes it and the partials it kept) and UPLOAD_GONE is raised."""
        if final.state != UploadState.ACTIVE or not final.partials:
            return final
        now = self._clock()
        partials = [await self._runner.db(self._catalog.get_upload, p) for p in final.partials]
        usable = [p for p in partials if p is not None and _may_finish(p, now)]
        total = sum(p.length or 0 for p in usable)
        if len(usable) < len(partials) or total > self._rules.max_size:
            await self._runner.db(
                self._catalog.commit, lease, Progress(expected_offset=0, offset=0, expires_at=now)
            )
            why = "exceed Tus-Max-Size" if len(usable) == len(partials) else "were removed"
            raise GatewayError(
                ERR.UPLOAD_GONE, f"partial uploads of this final {why}; it is being removed"
            )
        if any(p.state != UploadState.COMPLETE for p in usable):
            expires = now + self._rules.upload_ttl
            await self._runner.db(
                self._catalog.commit,
                lease,
                Progress(expected_offset=0, offset=0, expires_at=expires),
            )
            known = None if any(p.length is None for p in usable) else total
            return dataclasses.replace(final, length=known, expires_at=expires)
        if final.length is None:
            await self._runner.db(self._catalog.set_length, final.id, total)
        done = dataclasses.replace(
            final, length=total, offset=total, state=UploadState.COMPLETE, completed_at=now
        )
        jws = await self._runner.io(
            write_concat_manifest,
            store=self._store,
            signing=self._keys.signing_key(),
            final=done,
            partials=usable,
        )
        # Its notification enters the outbox with the completion (as for a PATCH's).
        event = None if self._events is None else self._events.completed(done, jws, now)
        progress = Progress(expected_offset=0, offset=total, complete_at=now, event=event)
        await self._runner.db(self._catalog.commit, lease, progress)
        metrics.UPLOADS_FINISHED.inc()
        return done

    async def _live_partial(self, principal: Principal, partial_id: str) -> Upload:
        found = await self._runner.db(self._catalog.get_upload, partial_id)
        try:
            partial = check_owned(principal, found, self._clock())
        except GatewayError as exc:
            raise GatewayError(
                ERR.INVALID_CONCAT, f"partial upload {partial_id} does not exist"
            ) from exc
        if partial.concat != "partial":
            raise GatewayError(ERR.INVALID_CONCAT, f"upload {partial_id} is not a partial upload")
        return partial


def _may_finish(partial: Upload, now: float) -> bool:
    """Whether a partial still is, or may become, complete (not removed nor expired)."""
    if partial.state == UploadState.COMPLETE:
        return True
    expires_at = partial.expires_at
    return partial.state == UploadState.ACTIVE and (expires_at is None or expires_at > now)
