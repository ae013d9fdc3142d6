"""Fair shares between principals: writer slots, request rate, the receive budget.

    WriterSlots   PATCH bodies received at once, with a share kept for principals
                  that hold none (so one principal can never take them all)
    RequestRate   a token bucket per principal (in this process's memory)
    ReceiveBudget bytes of received plaintext all uploads may hold, taken and given
                  back in any amounts, first come first served

All three live in one process: with `--workers N` each worker has its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway import metrics
from gateway.errors import ERR, GatewayError


class WriterSlots:
    """`total` slots; the last `reserved` of them only for principals holding none.

    A principal may hold at most `per_principal` slots (0: total - reserved). A request
    that may not take a slot now waits up to `wait` seconds for one, then is refused:
    `503 ERR_SERVER_BUSY` when every slot is taken, `429 ERR_TOO_MANY_WRITERS` when
    its own principal's writers are what stands in the way.
    """

    def __init__(self, total: int, *, reserved: int, per_principal: int, wait: float) -> None:
        self.total = total
        self.reserved = min(reserved, total - 1)
        self.per_principal = per_principal or total - self.reserved
        self._wait = wait
        self._held: collections.Counter[str] = collections.Counter()
        self._in_use = 0
        self._freed = asyncio.Condition()

    def held(self, principal: str) -> int:
        return self._held[principal]

    def free_for(self, principal: str) -> bool:
        """Whether `principal` would get a slot now, without waiting."""
        return self._may_take(principal)

    def _may_take(self, principal: str) -> bool:
        mine = self._held[principal]
        if mine == 0:
            return self._in_use < self.total
        return mine < self.per_principal and self._in_use < self.total - self.reserved

    @asynccontextmanager
    async def slot(self, principal: str) -> AsyncIterator[None]:
        if not self._may_take(principal):
            try:
                async with self._freed:
                    await asyncio.wait_for(
                        self._freed.wait_for(lambda: self._may_take(principal)), self._wait
                    )
            except TimeoutError:
                raise self._refusal(principal) from None
        self._held[principal] += 1
        self._in_use += 1
        try:
            yield
        finally:
            self._in_use -= 1
            self._held[principal] -= 1
            if not self._held[principal]:
                del self._held[principal]
            async with self._freed:
                self._freed.notify_all()

    def _refusal(self, principal: str) -> GatewayError:
        if self._held[principal] and self._in_use < self.total:
            metrics.REFUSED.labels("writers").inc()
            return GatewayError(
                ERR.TOO_MANY_WRITERS,
                "this principal is writing too many uploads at once; retry when one ends",
                headers={"Retry-After": "2"},
            )
        metrics.REFUSED.labels("busy").inc()
        return GatewayError(
            ERR.SERVER_BUSY,
            "too many uploads are being written right now; retry shortly",
            headers={"Retry-After": "2"},
        )


class RequestRate:
    """A token bucket per principal: `rate` requests a second, up to `burst` at once.

    Kept in memory: several worker processes each count their own share. Buckets
    that are full again are forgotten, so idle principals cost nothing.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, when)

    def take(self, principal: str) -> None:
        """Count one request, or raise 429 ERR_RATE_LIMITED with Retry-After."""
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, when = self._buckets.get(principal, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[principal] = (tokens, now)
            metrics.REFUSED.labels("rate").inc()
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise GatewayError(
                ERR.RATE_LIMITED,
                "too many requests from this principal; slow down",
                headers={"Retry-After": str(retry)},
            )
        self._buckets[principal] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full = [p for p, (t, w) in self._buckets.items() if t + (now - w) * self.rate >= self.burst]
        for p in full:
            del self._buckets[p]


class ReceiveBudget:
    """Bytes of received plaintext, all uploads together, waiting to be sealed.

    `take(n)` waits until n bytes are free; waiters are served in order, so a large
    request is not starved by small ones, except that one taken `first` (by a request
    whose client waits for its answer) goes before the others. `give(n)` hands bytes
    back.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def try_take(self, n: int, *, keep: int = 0) -> bool:
        """Take n bytes now if no one waits and `keep` bytes stay free after; never waits."""
        if self._waiters or n + keep > self.free:
            return False
        self.free -= n
        return True

    async def take(self, n: int, *, first: bool = False) -> None:
        n = min(n, self.total)
        if first and n <= self.free:
            self.free -= n
            return
        if self.try_take(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        if first:
            self._waiters.appendleft(entry)
        else:
            self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.give(n)  # granted just as we were cancelled: hand it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def give(self, n: int) -> None:
        self.free += min(n, self.total)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, future = self._waiters.popleft()
            if future.done():
                continue
            self.free -= n
            future.set_result(None)
