"""The deliverer: one task per gateway process sends the outbox's due rows, records each
outcome in the catalog, and backs off exponentially (with jitter) until a row is
delivered or dead. All of its state is in the catalog, so it survives restarts, and a
row is claimed for a while before it is sent, so gateways sharing a catalog never send
the same row at once. Delivery is at least once: a receiver deduplicates on
Gateway-Event-Id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gateway import metrics
from gateway.catalog.base import CatalogUnavailable, HookCatalog, HookDelivery
from gateway.hooks.http import HookUnreachable, post_signed, safe_url
from gateway.runner import Runner

log = logging.getLogger("gateway.hooks")
DEPTH_EVERY = 15.0  # seconds between counts of the outbox for the depth gauge, when idle


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout: float = 10.0  # seconds for connecting, and for each read and write
    max_attempts: int = 15  # failed attempts before a row is dead
    backoff_base: float = 1.0  # the delay after the first failure; it doubles each time
    backoff_max: float = 3600.0
    poll_interval: float = 1.0  # how often the outbox is looked at
    batch: int = 16  # rows claimed (and sent at once) per pass

    @property
    def claim_for(self) -> float:
        """How long a claim keeps others off a row: longer than any one send can take
        (http.WHOLE_CALL timeouts)."""
        return 3 * self.timeout + 10


def backoff(failures: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait after the `failures`-th failure: base * 2^(failures-1), at most
    `cap`, drawn uniformly from the upper half so that many rows failing together (a
    receiver down) do not come back together."""
    delay = min(cap, base * 2.0 ** min(failures - 1, 60))
    return delay / 2 + rand() * delay / 2


class Deliverer:
    """Sends the outbox's rows to their targets; `start` and `close` with the app."""

    def __init__(
        self,
        catalog: HookCatalog,
        runner: Runner,
        *,
        secret: bytes,
        policy: DeliveryPolicy,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._secret = secret
        self._policy = policy
        self._client = client
        self._clock = clock
        self._rand = rand
        self.holder = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_forever())

    async def close(self) -> None:
        """Stop; a row being sent keeps its claim until it lapses, then goes again."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def deliver_once(self) -> int:
        """Claim the due rows and send them; how many were claimed."""
        policy = self._policy
        rows = await self._runner.db(
            self._catalog.claim_hook_deliveries,
            self.holder,
            self._clock(),
            policy.claim_for,
            policy.batch,
        )
        if rows:
            await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def update_depth(self) -> None:
        live, dead = await self._runner.db(self._catalog.hook_outbox_depth)
        metrics.HOOK_OUTBOX_DEPTH.labels("pending").set(live)
        metrics.HOOK_OUTBOX_DEPTH.labels("dead").set(dead)

    async def _deliver(self, row: HookDelivery) -> None:
        started = time.perf_counter()
        try:
            answer = await post_signed(
                self._client,
                row.target,
                row.body,
                secret=self._secret,
                event_id=row.event_id,
                clock=self._clock,
            )
            error = None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except HookUnreachable as exc:
            error = str(exc)
        outcome = "delivered" if error is None else "failed"
        metrics.HOOK_REQUEST_DURATION.labels(outcome).observe(time.perf_counter() - started)
        if error is None:
            await self._runner.db(self._catalog.hook_delivered, row.event_id, row.target)
            metrics.HOOK_DELIVERIES.labels("delivered").inc()
            metrics.HOOK_DELIVERY_LATENCY.observe(max(0.0, self._clock() - row.created_at))
            log.info(
                "hook delivered",
                extra={
                    "event_id": row.event_id,
                    "upload_id": row.upload_id,
                    "target": safe_url(row.target),
                },
            )
            return
        failures = row.attempts + 1
        dead = failures >= self._policy.max_attempts
        delay = backoff(failures, self._policy.backoff_base, self._policy.backoff_max, self._rand)
        await self._runner.db(
            self._catalog.hook_failed,
            row.event_id,
            row.target,
            self.holder,
            next_attempt_at=self._clock() + delay,
            error=error,
            dead=dead,
        )
        metrics.HOOK_DELIVERIES.labels("dead" if dead else "failed").inc()
        log.warning(
            "hook delivery failed%s",
            "; dead-lettered" if dead else "",
            extra={
                "event_id": row.event_id,
                "upload_id": row.upload_id,
                "target": safe_url(row.target),
                "error": error,
                "attempts": failures,
            },
        )

    async def _deliver_forever(self) -> None:
        depth_at = -DEPTH_EVERY
        while True:
            claimed = 0
            try:
                claimed = await self.deliver_once()
                if claimed or time.monotonic() - depth_at > DEPTH_EVERY:
                    await self.update_depth()
                    depth_at = time.monotonic()
            except CatalogUnavailable:
                pass  # rows wait in the catalog until it is back
            except Exception:
                log.exception("hook delivery pass failed")
            if claimed < self._policy.batch:  # a full batch: more may be due at once
                await asyncio.sleep(self._policy.poll_interval)
