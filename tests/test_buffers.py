"""The buffer pools: buffers are reused, a few at most are kept, sizes never mix; sized
buffers come in classes, kept up to a number of idle bytes."""

from __future__ import annotations

from gateway.buffers import SIZED_MIN, BufferPool, Pools, SizedBuffers, size_class

MiB = 1 << 20


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


def test_a_buffer_dropped_because_enough_are_idle_is_reported_freed() -> None:
    freed: list[int] = []
    pools = Pools(keep=1, sized=SizedBuffers(released=freed.append))
    pool = pools.for_size(MiB)
    first, second = pool.take(), pool.take()
    pool.give(first)
    assert freed == []
    pool.give(second)  # one is idle already: this one goes to the C allocator
    assert freed == [MiB]


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


def test_size_classes_leave_at_most_a_quarter_spare() -> None:
    assert size_class(1) == SIZED_MIN == size_class(SIZED_MIN)
    assert size_class(MiB) == MiB and size_class(MiB + 1) == MiB + MiB // 4
    assert size_class(8 * MiB + 28) == 10 * MiB
    for size in range(SIZED_MIN, 12 * MiB, 77_777):
        cls = size_class(size)
        assert size <= cls <= size + size // 4 and size_class(cls) == cls


def test_sized_buffers_are_reused_by_class() -> None:
    sized = SizedBuffers()
    first = sized.take(MiB + 1)
    assert len(first) == size_class(MiB + 1)
    sized.give(first)
    assert sized.idle == len(first)
    assert sized.take(MiB + 1000) is first and sized.idle == 0
    assert len(sized.take(MiB)) == MiB  # another class: a new one


def test_an_idle_sized_buffer_up_to_twice_the_size_is_taken_before_a_new_one() -> None:
    sized = SizedBuffers()
    larger, too_large = sized.take(2 * MiB), sized.take(3 * MiB)
    sized.give(too_large)
    sized.give(larger)
    assert sized.take(MiB + 1) is larger  # its class: 1.25 MiB; 2 MiB is within twice that
    assert sized.idle == len(too_large)
    assert sized.take(MiB + 1) is not too_large  # more than twice: a new one
    assert sized.take(2 * MiB) is too_large  # 3 MiB is within twice 2 MiB


def test_sized_buffers_beyond_the_idle_bytes_are_dropped_and_reported() -> None:
    freed: list[int] = []
    sized = SizedBuffers(idle=3 * MiB, released=freed.append)
    buffers = [sized.take(MiB) for _ in range(4)]
    for buffer in buffers:
        sized.give(buffer)
    assert sized.idle == 3 * MiB and freed == [MiB]
    sized.give(bytearray(MiB + 5))  # not a class size: never kept
    assert freed == [MiB, MiB + 5]
    sized.released(7)
    assert freed[-1] == 7
