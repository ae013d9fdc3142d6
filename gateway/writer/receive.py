"""Receiving the body under the memory budget: its bytes gathered into pooled slices."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.buffers import Pools
from gateway.limits import ReceiveBudget
from gateway.runner import answering
from gateway.writer.base import Batch, Fragment

SLICE = 1 << 20  # plaintext handed to the sealing thread at once, from a fast body
# A body starts with small slices and takes 1 MiB ones once it shows it is fast (a
# small slice filled within FAST_FILL of the one before); a large slice that takes
# SLOW_FILL sends it back to small ones. A partly filled slice whose client has been
# quiet for a poll of the lease's watcher is handed to sealing as it is (see
# Control.on_idle), so a stalled body holds no slice (nor budget).
SMALL_SLICE = 32 << 10
FAST_FILL = 0.01
SLOW_FILL = 0.1
QUEUED_LIMIT = 12 << 20  # plaintext one upload may have waiting before its reading pauses
# The read after a quiet spell takes at most this much, into a buffer made when its
# bytes come (SegmentWriter._receive).
QUIET_READ = 64 << 10


class Slices:
    """The slice a body's bytes are gathered in, each one counted in the shared budget.

    Gathered into slices (1 MiB ones when fast), the bytes cost the sealing threads a
    few large calls instead of many small ones that would each contend for the GIL.
    """

    def __init__(
        self,
        pools: Pools,
        budget: ReceiveBudget,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Enough idle slices for one upload's whole queue, so a steady upload reuses them.
        pools.for_size(SLICE, keep=QUEUED_LIMIT // SLICE + 4)
        pools.for_size(SMALL_SLICE, keep=256)
        self._pools = pools
        self.budget = budget
        self._clock = clock
        self._slice: bytearray | None = None  # received bytes are gathered here
        self.fill = 0
        self._size = SMALL_SLICE  # the size of the next slice taken
        self._started = clock()  # when the slice before was filled

    async def ready(self) -> None:
        """Hold a slice to gather into, waiting for the budget if need be."""
        if self._slice is None:
            size = self._size
            await self.budget.take(size, first=answering())
            self._slice, self.fill = self._pools.for_size(size).take(), 0

    def gather(self, view: memoryview, most: int) -> int:
        """Copy up to `most` bytes of `view` into the slice held; how many it took."""
        room = self.room(most)
        n = min(len(view), len(room))
        room[:n] = view[:n]
        self.filled(n)
        return n

    def room(self, most: int) -> memoryview:
        """Where the next bytes go in the slice held: up to `most` of them."""
        buffer = self._slice
        assert buffer is not None
        return memoryview(buffer)[self.fill : self.fill + min(most, len(buffer) - self.fill)]

    def filled(self, n: int) -> None:
        """`n` bytes were put into the slice's `room`."""
        assert self._slice is not None
        self.fill += n
        if self.fill == len(self._slice):
            self._pace(len(self._slice))

    @property
    def full(self) -> bool:
        return self._slice is not None and self.fill == len(self._slice)

    @property
    def partial(self) -> bool:
        return self._slice is not None and self.fill > 0

    def _pace(self, size: int) -> None:
        """A slice filled: choose the size of the next from how fast this one did.

        Timed from when the slice before it filled, not from its own first byte: one
        chunk of a slow client can fill a small slice at once."""
        now = self._clock()
        took, self._started = now - self._started, now
        if size == SMALL_SLICE and took <= FAST_FILL:
            self._size = SLICE
        elif size == SLICE and took >= SLOW_FILL:
            self._size = SMALL_SLICE

    def slow_down(self) -> None:
        """The client went quiet: the next slice is a small one."""
        self._size = SMALL_SLICE
        self._started = self._clock()

    def hand_over(self) -> Fragment | None:
        """The slice's bytes, the slice going with them; None (and the slice back) if empty."""
        buffer, self._slice = self._slice, None
        if buffer is None:
            return None
        if not self.fill:
            self.give(buffer)
            return None
        return (memoryview(buffer)[: self.fill], True, buffer)

    def give(self, buffer: bytearray) -> None:
        """A slice back to the pool and its bytes back to the budget."""
        self._pools.for_size(len(buffer)).give(buffer)
        self.budget.give(len(buffer))

    def give_all(self, batch: Batch, lent: bool = False) -> None:
        """The fragments' buffers back to their pools and their bytes to the budget.

        `lent`: a worker thread may still read them (the task that handed them over was
        cancelled): the budget gets their bytes back, the pools never see them again.
        """
        sized = self._pools.sized
        for view, new, buffer in batch:
            if buffer is None:
                self.budget.give(len(view))
            elif new:  # a slice, holding its whole size
                if not lent:
                    self._pools.for_size(len(buffer)).give(buffer)
                self.budget.give(len(buffer))
            else:  # bytes read back from tail pieces, holding their length
                if lent:
                    sized.released(len(buffer))  # dropped: let the trimmer know
                else:
                    sized.give(buffer)
                self.budget.give(len(view))

    def hold_whole(self, size: int) -> bool:
        """Take `size` bytes to keep a short body whole until it ends, if there is room now.

        Never waited for, and never more than half of the budget for such bodies
        together: a body kept whole holds its share until it ends, however slowly.
        """
        return self.budget.try_take(size, keep=self.budget.total // 2)
