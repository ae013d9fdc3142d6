"""The audit service: appends entries off the event loop, signs the head at intervals.

Adding an event is one call: `await audit.record(action, actor, upload_id, ...)` in the
gateway, `audit.record_now(...)` in a command. An append that fails is never silent: it
is logged as an error (action and upload id, nothing else) and counted in
`gateway_audit_append_failures_total`; the request that caused it still succeeds, since
what it did has happened already (docs/AUDIT.md, "When an append fails").
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import time
from collections.abc import Callable, Mapping

from gateway import audit, metrics
from gateway.audit import Actor, Detail, Event
from gateway.catalog.base import AuditCatalog, StoredCheckpoint
from gateway.keys.base import KeyProvider
from gateway.runner import Runner
from gateway.signer import rfc3339

log = logging.getLogger("gateway.audit")


class Audit:
    def __init__(
        self,
        catalog: AuditCatalog,
        *,
        keys: KeyProvider | None = None,
        runner: Runner | None = None,
        checkpoint_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._keys = keys  # None: no checkpoints (a command without the signing key)
        self._runner = runner  # None: blocking use only (commands)
        self._interval = checkpoint_seconds
        self._clock = clock
        self._timer: asyncio.Task[None] | None = None

    # -- appending --------------------------------------------------------------------------

    async def record(
        self,
        action: str,
        actor: Actor,
        upload_id: str | None = None,
        *,
        outcome: str = audit.OK,
        code: str | None = None,
        details: Mapping[str, Detail] | None = None,
        upload_tenant: str | None = None,
    ) -> bool:
        """Append one entry on the runner's catalog thread; False if it failed (logged
        and counted, never raised)."""
        event = Event(action, actor, upload_id, outcome, code, dict(details or {}), upload_tenant)
        if self._runner is None:
            return self._append(event)
        return await self._runner.db(self._append, event)

    def record_now(
        self,
        action: str,
        actor: Actor,
        upload_id: str | None = None,
        *,
        outcome: str = audit.OK,
        code: str | None = None,
        details: Mapping[str, Detail] | None = None,
        upload_tenant: str | None = None,
    ) -> bool:
        """`record`, blocking: for commands and code already off the event loop."""
        event = Event(action, actor, upload_id, outcome, code, dict(details or {}), upload_tenant)
        return self._append(event)

    def _append(self, event: Event) -> bool:
        start = time.perf_counter()
        try:
            self._catalog.append_audit(audit.builder(event, self._clock()))
        except Exception as exc:
            metrics.AUDIT_FAILURES.inc()
            log.error(
                "audit append failed: %s",
                type(exc).__name__,
                extra={"action": event.action, "upload_id": event.upload_id},
            )
            return False
        metrics.AUDIT_APPEND_DURATION.observe(time.perf_counter() - start)
        metrics.AUDIT_ENTRIES.labels(event.action).inc()
        return True

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_now(self) -> int | None:
        """Sign the head if no checkpoint covers it yet; its seq, or None if nothing new
        (or no keys). Several processes may race: one checkpoint per seq is kept."""
        if self._keys is None:
            return None
        seq, head = self._catalog.audit_head()
        if seq == 0 or self._catalog.audit_checkpoints(after=seq - 1):
            return None  # empty, or signed already
        at = self._clock()
        token = audit.sign_checkpoint(seq, head, at, self._keys.signing_key())
        if self._catalog.add_audit_checkpoint(StoredCheckpoint(seq, rfc3339(at), token)):
            # Also in the log stream, which leaves the host: a copy of the head elsewhere.
            log.info("audit checkpoint", extra={"seq": seq, "hash": head})
        return seq

    async def checkpoint(self) -> int | None:
        try:
            if self._runner is None:
                return self.checkpoint_now()
            return await self._runner.io(self.checkpoint_now)
        except Exception as exc:
            metrics.AUDIT_FAILURES.inc()
            log.error("audit checkpoint failed: %s", type(exc).__name__)
            return None

    def start(self) -> None:
        """Checkpoint every `checkpoint_seconds` until `close`."""
        self._timer = asyncio.create_task(self._checkpoint_forever())

    async def close(self) -> None:
        """Stop the timer and checkpoint the head one last time (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self.checkpoint()

    async def _checkpoint_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.checkpoint()


def operator() -> str:
    """Who acts at the command line: `cli:<user>` (the audit log's principal for commands)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
