"""The writer's intake side: slices gathered under the shared receive budget."""

from __future__ import annotations

import pytest

from gateway.buffers import Pools
from gateway.limits import ReceiveBudget
from gateway.writer.receive import SLICE, SMALL_SLICE, Slices


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slices(total: int = 8 * SLICE) -> tuple[Slices, ReceiveBudget, Clock]:
    budget, clock = ReceiveBudget(total), Clock()
    return Slices(Pools(keep=4), budget, clock=clock), budget, clock


async def test_a_slice_is_taken_from_the_budget_and_given_back() -> None:
    gatherer, budget, _ = slices()
    await gatherer.ready()
    assert budget.free == budget.total - SMALL_SLICE
    assert gatherer.gather(memoryview(b"abcdef"), most=4) == 4  # no further than asked
    assert gatherer.partial and not gatherer.full
    fragment = gatherer.hand_over()
    assert fragment is not None
    view, new, buffer = fragment
    assert bytes(view) == b"abcd" and new and buffer is not None
    assert budget.free == budget.total - SMALL_SLICE  # the fragment holds it until given
    gatherer.give_all([fragment])
    assert budget.free == budget.total


async def test_a_direct_read_fills_the_slices_room_in_place() -> None:
    """What a read from the socket is given: the slice's free bytes, no more than asked;
    the bytes put there count once `filled` says so."""
    gatherer, _, _ = slices()
    await gatherer.ready()
    room = gatherer.room(most=SLICE)
    assert len(room) == SMALL_SLICE
    room[:3] = b"abc"
    gatherer.filled(3)
    assert len(gatherer.room(most=10)) == 10
    assert len(gatherer.room(most=SLICE)) == SMALL_SLICE - 3
    rest = gatherer.room(most=SLICE)
    rest[:] = b"d" * len(rest)
    gatherer.filled(len(rest))
    assert gatherer.full
    fragment = gatherer.hand_over()
    assert fragment is not None and bytes(fragment[0]) == b"abc" + b"d" * (SMALL_SLICE - 3)


async def test_bytes_read_back_go_back_to_the_sized_buffers_and_lent_ones_nowhere() -> None:
    pools, budget = Pools(keep=4), ReceiveBudget(8 * SLICE)
    gatherer = Slices(pools, budget)
    read_back = pools.sized.take(1000)
    await budget.take(1000)  # bytes read back hold their length, not their buffer's
    await gatherer.ready()
    fragment = gatherer.hand_over() if gatherer.gather(memoryview(b"new"), most=3) else None
    assert fragment is not None
    gatherer.give_all([(memoryview(read_back)[:1000], False, read_back), fragment])
    assert budget.free == budget.total
    assert pools.sized.take(1000) is read_back
    assert pools.for_size(SMALL_SLICE).take() is fragment[2]
    # Lent (a worker thread may still read them): the budget's, but never pooled again.
    await budget.take(1000 + SMALL_SLICE)
    gatherer.give_all([(memoryview(read_back)[:1000], False, read_back), fragment], lent=True)
    assert budget.free == budget.total
    assert pools.sized.take(1000) is not read_back
    assert pools.for_size(SMALL_SLICE).take() is not fragment[2]


async def test_an_empty_slice_goes_straight_back() -> None:
    gatherer, budget, _ = slices()
    await gatherer.ready()
    assert gatherer.hand_over() is None and budget.free == budget.total
    assert gatherer.hand_over() is None  # holding none: nothing to hand


async def test_a_fast_body_gets_large_slices_and_a_slow_one_small_ones() -> None:
    gatherer, budget, clock = slices()
    data = memoryview(bytes(SLICE))
    await gatherer.ready()
    clock.now = 0.001  # filled quickly
    assert gatherer.gather(data, SLICE) == SMALL_SLICE and gatherer.full
    fragment = gatherer.hand_over()
    assert fragment is not None
    gatherer.give_all([fragment])
    await gatherer.ready()
    clock.now = 1.0  # the large one took long
    assert gatherer.gather(data, SLICE) == SLICE
    fragment = gatherer.hand_over()
    assert fragment is not None
    gatherer.give_all([fragment])
    await gatherer.ready()
    assert gatherer.gather(data, SLICE) == SMALL_SLICE
    gatherer.slow_down()
    assert budget.free == budget.total - SMALL_SLICE


@pytest.mark.parametrize(("free", "size", "kept"), [(100, 50, True), (100, 51, False)])
async def test_a_body_kept_whole_leaves_half_of_the_budget(
    free: int, size: int, kept: bool
) -> None:
    gatherer, budget, _ = slices(total=free)
    assert gatherer.hold_whole(size) is kept
    assert budget.free == (free - size if kept else free)
