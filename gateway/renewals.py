"""Lease renewals gathered into one catalog call for all of a process's holders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.catalog.base import Lease, LeaseCatalog, LeaseState
from gateway.runner import Runner


class Renewals:
    """Renews the leases asked for within a short window in one catalog call.

    Every holder renews its lease each poll. Each in a transaction of its own, 500
    uploads cost the one catalog thread about 1,000 transactions a second, and the
    commits of finishing PATCHes queue behind them; gathered, a process spends one
    transaction per window on them all.

    A renewal asked while none is gathering opens a window of `window` seconds; every
    renewal asked within it joins, then one `renew_leases` renews them all. Asks that
    arrive while that call is on its way join the next window. Each waiter gets its
    own lease's state, or the call's exception. A waiter cancelled before the call is
    made is left out of it; one cancelled later just gets nothing.
    """

    def __init__(
        self,
        catalog: LeaseCatalog,
        runner: Runner,
        *,
        ttl: float,
        window: float,
        clock: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._ttl = ttl
        self._window = window
        self._clock = clock
        self._pending: list[tuple[Lease, asyncio.Future[LeaseState]]] = []
        self._task: asyncio.Task[None] | None = None

    async def renew(self, lease: Lease) -> LeaseState:
        """Extend `lease` by the ttl, with the others asked for meanwhile; its state."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LeaseState] = loop.create_future()
        self._pending.append((lease, future))
        if self._task is None:
            self._task = loop.create_task(self._gather())
        # A caller cancelled here cancels `future` too: the gathering then skips it.
        return await future

    async def _gather(self) -> None:
        batch: list[tuple[Lease, asyncio.Future[LeaseState]]] = []
        try:
            while self._pending:
                await asyncio.sleep(self._window)
                batch = [(lease, f) for lease, f in self._pending if not f.done()]
                self._pending = []
                if batch:
                    await self._renew(batch)
                batch = []
        finally:
            # Ends when nothing is pending; if cancelled (the loop shutting down), no
            # waiter is left waiting for an answer that will not come.
            self._task = None
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []

    async def _renew(self, batch: list[tuple[Lease, asyncio.Future[LeaseState]]]) -> None:
        try:
            states = await self._runner.db(
                self._catalog.renew_leases, [lease for lease, _ in batch], self._ttl, self._clock()
            )
        except Exception as exc:  # each waiter handles it (CatalogUnavailable: retried)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), state in zip(batch, states, strict=True):
            if not future.done():
                future.set_result(state)
