"""Lease renewals gathered into one catalog call (gateway/renewals.py), on their own and
as the holders of a `Leases` use them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.catalog.base import CatalogUnavailable, Lease, LeaseState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.leases import Control, Leases, StopReason
from gateway.renewals import Renewals
from gateway.runner import Runner

TTL = 30.0
POLL = 0.05


class CountingCatalog(SQLiteCatalog):
    """Records the upload ids of each `renew_leases` call; fails it while `down`, and
    holds it at `gate` when one is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[list[str]] = []
        self.down = False
        self.gate: threading.Event | None = None

    def renew_leases(self, leases: Sequence[Lease], ttl: float, now: float) -> list[LeaseState]:
        self.calls.append([lease.upload_id for lease in leases])
        if self.gate is not None:
            self.gate.wait(5)
        if self.down:
            raise CatalogUnavailable("down")
        return super().renew_leases(leases, ttl, now)


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[CountingCatalog]:
    cat = CountingCatalog(tmp_path / "catalog.sqlite3")
    yield cat
    cat.close()


def _leases(catalog: CountingCatalog, runner: Runner, renew_window: float | None = None) -> Leases:
    return Leases(
        catalog, runner, ttl=TTL, acquire_timeout=1.0, network_timeout=60.0,
        poll_interval=POLL, stale_after=0.5, renew_window=renew_window,
    )  # fmt: skip


def _renewals(catalog: CountingCatalog, runner: Runner) -> Renewals:
    return Renewals(catalog, runner, ttl=TTL, window=0.05, clock=time.time)


def _lease(catalog: CountingCatalog, upload_id: str) -> Lease:
    lease = catalog.acquire_lease(upload_id, "here", TTL, time.time())
    assert lease is not None
    return lease


async def _only_this_task_left(within: float = 1.0) -> None:
    """Nothing the renewals started outlives them: the gathering task ends at the end of
    its window at the latest (on a loaded machine, that may take a while to come)."""
    deadline = time.monotonic() + within
    while asyncio.all_tasks() != {asyncio.current_task()} and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_many_holders_renew_in_few_catalog_calls(
    catalog: CountingCatalog, runner: Runner
) -> None:
    leases = _leases(catalog, runner)
    holders = 50
    held = 1.0
    async with contextlib.AsyncExitStack() as stack:
        controls: list[Control] = [
            await stack.enter_async_context(leases.held(f"u{i}", watch=True))
            for i in range(holders)
        ]
        await asyncio.sleep(held)
        calls = list(catalog.calls)
        assert all(control.stop_reason is None for control in controls)
        states = catalog.renew_leases([c.lease for c in controls], TTL, time.time())
        assert all(state.valid and not state.release_requested for state in states)
    polls = held / POLL
    # Every holder still renews each poll...
    assert sum(len(call) for call in calls) >= holders * polls / 2
    # ...but not each in a call of its own (holders * polls calls, 1,000 here).
    assert len(calls) < holders * polls / 10, len(calls)
    await _only_this_task_left()


async def test_each_holder_gets_its_own_leases_state(
    catalog: CountingCatalog, runner: Runner
) -> None:
    # A window long enough that the three holders' first renewals surely share it
    # (renewed together, they stay together).
    leases = _leases(catalog, runner, renew_window=0.8 * POLL)
    async with (
        leases.held("taken", watch=True) as taken,
        leases.held("asked", watch=True) as asked,
        leases.held("kept", watch=True) as kept,
    ):
        # Past its expiry, as a holder elsewhere sees a silent one: taken over.
        assert catalog.acquire_lease("taken", "elsewhere", TTL, time.time() + TTL) is not None
        assert catalog.acquire_lease("asked", "elsewhere", TTL, time.time()) is None
        deadline = time.monotonic() + 2.0
        while (taken.stop_reason is None or asked.stop_reason is None) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        assert taken.stop_reason is StopReason.LEASE_LOST
        assert asked.stop_reason is StopReason.RELEASED
        assert kept.stop_reason is None
    assert catalog.calls[0] == ["taken", "asked", "kept"]  # all three in one call


async def test_an_outage_reaches_every_waiter(catalog: CountingCatalog, runner: Runner) -> None:
    renewals = _renewals(catalog, runner)
    catalog.down = True
    tries = [renewals.renew(_lease(catalog, f"u{i}")) for i in range(3)]
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(result, CatalogUnavailable) for result in results)
    assert len(catalog.calls) == 1
    catalog.down = False
    assert (await renewals.renew(_lease(catalog, "u0"))).valid
    await _only_this_task_left()


async def test_a_cancelled_waiter_is_left_out(catalog: CountingCatalog, runner: Runner) -> None:
    renewals = _renewals(catalog, runner)
    gone = asyncio.create_task(renewals.renew(_lease(catalog, "gone")))
    stays = asyncio.create_task(renewals.renew(_lease(catalog, "stays")))
    await asyncio.sleep(0)  # both asked: the window is open
    gone.cancel()
    assert (await stays).valid
    assert gone.cancelled()
    assert catalog.calls == [["stays"]]
    await _only_this_task_left()


async def test_asks_during_a_call_join_the_next_one(
    catalog: CountingCatalog, runner: Runner
) -> None:
    renewals = _renewals(catalog, runner)
    catalog.gate = threading.Event()
    first = asyncio.create_task(renewals.renew(_lease(catalog, "first")))
    while not catalog.calls:  # the first window closed, its call is on its way
        await asyncio.sleep(0.01)
    second = asyncio.create_task(renewals.renew(_lease(catalog, "second")))
    await asyncio.sleep(0.1)  # longer than a window: it still waits for the call
    catalog.gate.set()
    assert (await first).valid and (await second).valid
    assert catalog.calls == [["first"], ["second"]]
    await _only_this_task_left()
