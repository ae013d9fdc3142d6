"""Per-upload leases: take one (asking the holder to let go), keep it, and hand it back."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.catalog.base import Catalog, Lease
from gateway.errors import ERR, GatewayError
from gateway.runner import Runner


@dataclass
class Control:
    """What a running writer watches: why it should stop, and when it last got bytes."""

    lease: Lease
    stop_reason: str | None = None  # "released" | "shutdown" | "timeout" | "lease-lost"
    last_activity: float = field(default_factory=time.monotonic)
    in_receive: bool = False
    task: asyncio.Task[object] | None = None

    def stop(self, reason: str) -> None:
        """Ask the writer to stop reading; a read blocked on the network is cut."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.in_receive and self.task is not None and not self.task.done():
            self.task.cancel()


class Leases:
    """Leases live in the catalog so they hold across processes; this adds the fast path.

    A request for a busy upload flags a release request in the catalog (seen by any
    instance's holder within one poll) and, when the holder runs in this process,
    stops it at once — so a client that reconnects resumes in well under a second.
    """

    def __init__(
        self,
        catalog: Catalog,
        runner: Runner,
        *,
        ttl: float,
        acquire_timeout: float,
        network_timeout: float,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._ttl = ttl
        self._acquire_timeout = acquire_timeout
        self._poll = poll_interval
        self._network_timeout = network_timeout
        self._clock = clock
        self._instance = secrets.token_hex(6)
        self._active: dict[str, Control] = {}
        self.shutting_down = False

    async def acquire(self, upload_id: str) -> Lease:
        holder = f"{self._instance}:{secrets.token_hex(6)}"
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            lease = await self._runner.db(
                self._catalog.acquire_lease, upload_id, holder, self._ttl, self._clock()
            )
            if lease is not None:
                return lease
            local = self._active.get(upload_id)
            if local is not None:
                local.stop("released")
            if time.monotonic() >= deadline:
                raise GatewayError(
                    ERR.UPLOAD_LOCKED, "another request is writing this upload; try again"
                )
            await asyncio.sleep(0.02 if local is not None else self._poll / 2)

    async def release(self, lease: Lease) -> None:
        await self._runner.db(self._catalog.release_lease, lease)

    @contextlib.asynccontextmanager
    async def held(self, upload_id: str, *, watch: bool = False) -> AsyncIterator[Control]:
        """Hold the upload's lease for the block; with `watch`, renew it and poll for stops."""
        lease = await self.acquire(upload_id)
        control = Control(lease, task=asyncio.current_task())
        watcher = None
        if watch:
            self._active[upload_id] = control
            watcher = asyncio.create_task(self._watch(control))
        try:
            yield control
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                if self._active.get(upload_id) is control:
                    del self._active[upload_id]
            await self.release(control.lease)

    async def _watch(self, control: Control) -> None:
        timeout = self._network_timeout
        while control.stop_reason is None:
            await asyncio.sleep(self._poll)
            if self.shutting_down:
                control.stop("shutdown")
            elif time.monotonic() - control.last_activity > timeout and control.in_receive:
                control.stop("timeout")
            state = await self._runner.db(
                self._catalog.renew_lease, control.lease, self._ttl, self._clock()
            )
            if not state.valid:
                control.stop("lease-lost")
            elif state.release_requested:
                control.stop("released")

    def stop_all(self) -> None:
        """Shutdown: every writer in this process stops reading and saves what it has."""
        self.shutting_down = True
        for control in list(self._active.values()):
            control.stop("shutdown")
