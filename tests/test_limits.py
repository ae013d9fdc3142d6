"""Fair shares: writer slots with a reserve, a request-rate bucket, the receive budget."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.errors import ERR, GatewayError
from gateway.limits import ReceiveBudget, RequestRate, WriterSlots


async def _hold(slots: WriterSlots, who: str, release: asyncio.Event) -> None:
    async with slots.slot(who):
        await release.wait()


async def test_a_principal_holding_writers_cannot_take_the_reserved_share() -> None:
    slots = WriterSlots(4, reserved=2, per_principal=0, wait=0.05)
    release = asyncio.Event()
    held = [asyncio.create_task(_hold(slots, "a", release)) for _ in range(2)]
    await asyncio.sleep(0)
    assert slots.held("a") == 2
    with pytest.raises(GatewayError) as caught:
        async with slots.slot("a"):
            pass
    assert caught.value.err is ERR.TOO_MANY_WRITERS and caught.value.status == 429
    assert caught.value.headers["Retry-After"]
    # Principals that hold none still get in, up to the last slot.
    async with slots.slot("b"), slots.slot("c"):
        with pytest.raises(GatewayError) as busy:
            async with slots.slot("d"):
                pass
        assert busy.value.err is ERR.SERVER_BUSY
    release.set()
    await asyncio.gather(*held)
    assert slots.held("a") == 0


async def test_the_first_writer_of_any_principal_may_take_a_reserved_slot() -> None:
    slots = WriterSlots(3, reserved=2, per_principal=0, wait=0.05)
    async with slots.slot("a"), slots.slot("b"):  # the reserve, since b holds none
        pass


async def test_a_principal_is_held_to_its_own_cap_and_waits_for_its_own_slot() -> None:
    slots = WriterSlots(10, reserved=0, per_principal=1, wait=1.0)
    release = asyncio.Event()
    first = asyncio.create_task(_hold(slots, "a", release))
    await asyncio.sleep(0)
    second = asyncio.create_task(_hold(slots, "a", asyncio.Event()))
    await asyncio.sleep(0.05)
    assert slots.held("a") == 1  # the second waits
    release.set()
    await first
    await asyncio.sleep(0.01)
    assert slots.held("a") == 1  # and got the slot the first gave back
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second


def test_the_request_rate_bucket_refuses_beyond_the_burst_with_retry_after() -> None:
    now = [0.0]
    rate = RequestRate(2.0, 3, clock=lambda: now[0])
    for _ in range(3):
        rate.take("a")
    with pytest.raises(GatewayError) as caught:
        rate.take("a")
    assert caught.value.err is ERR.RATE_LIMITED and caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "1"
    rate.take("b")  # each principal has its own bucket
    now[0] = 0.5  # one token back
    rate.take("a")
    with pytest.raises(GatewayError):
        rate.take("a")


def test_a_zero_request_rate_is_no_limit() -> None:
    rate = RequestRate(0.0, 1)
    for _ in range(100):
        rate.take("a")


async def test_the_receive_budget_serves_waiters_in_order_and_counts_bytes() -> None:
    budget = ReceiveBudget(100)
    await budget.take(60)
    assert not budget.try_take(50)
    order: list[int] = []

    async def want(n: int) -> None:
        await budget.take(n)
        order.append(n)

    big = asyncio.create_task(want(80))
    await asyncio.sleep(0)
    small = asyncio.create_task(want(10))
    await asyncio.sleep(0)
    assert order == [] and not budget.try_take(10)  # the small one waits its turn
    budget.give(60)
    await asyncio.gather(big, small)
    assert order == [80, 10] and budget.free == 10


async def test_a_request_whose_client_waits_takes_the_budget_first() -> None:
    budget = ReceiveBudget(100)
    await budget.take(90)
    order: list[str] = []

    async def want(n: int, name: str, *, first: bool = False) -> None:
        await budget.take(n, first=first)
        order.append(name)

    waiting = asyncio.create_task(want(20, "in order"))
    await asyncio.sleep(0)
    await want(10, "first, free now", first=True)  # past the waiter: there is room
    ending = asyncio.create_task(want(30, "first", first=True))
    await asyncio.sleep(0)
    budget.give(50)
    await asyncio.gather(waiting, ending)
    assert order == ["first, free now", "first", "in order"] and budget.free == 0


async def test_a_cancelled_waiter_takes_nothing_from_the_budget() -> None:
    budget = ReceiveBudget(100)
    await budget.take(100)
    waiter = asyncio.create_task(budget.take(50))
    await asyncio.sleep(0)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    budget.give(100)
    assert budget.free == 100 and budget.try_take(100)


def test_try_take_can_leave_bytes_free() -> None:
    budget = ReceiveBudget(100)
    assert not budget.try_take(51, keep=50)
    assert budget.try_take(50, keep=50) and budget.free == 50
    assert not budget.try_take(1, keep=50)
    assert budget.try_take(50) and budget.free == 0
