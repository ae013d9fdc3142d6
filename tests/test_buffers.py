"""The buffer pools: buffers are reused, a few at most are kept, sizes never mix."""

from __future__ import annotations

from gateway.buffers import BufferPool, Pools


def test_a_given_back_buffer_is_taken_again() -> None:
    pool = BufferPool(1024, keep=2)
    first = pool.take()
    assert len(first) == 1024
    pool.give(first)
    assert pool.take() is first
    assert pool.take() is not first  # the pool was empty: a new one


def test_at_most_keep_idle_buffers_are_kept() -> None:
    pool = BufferPool(16, keep=2)
    buffers = [pool.take() for _ in range(3)]
    for buffer in buffers:
        pool.give(buffer)
    again = [pool.take() for _ in range(3)]
    assert sum(any(b is a for a in buffers) for b in again) == 2


def test_a_buffer_of_another_size_is_not_kept() -> None:
    pool = BufferPool(16, keep=2)
    pool.give(bytearray(17))
    assert len(pool.take()) == 16


def test_one_pool_per_size_with_its_own_keep() -> None:
    pools = Pools(keep=1)
    assert pools.for_size(16) is pools.for_size(16)
    big = pools.for_size(32, keep=5)
    assert big is pools.for_size(32) and big is not pools.for_size(16)
    buffers = [big.take() for _ in range(5)]
    for buffer in buffers:
        big.give(buffer)
    taken = [big.take() for _ in range(5)]
    assert all(any(t is b for b in buffers) for t in taken)  # all five were kept
