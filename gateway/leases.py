"""Per-upload leases: take one (asking the holder to let go), keep it, and hand it back."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar, cast

from gateway import metrics
from gateway.catalog.base import CatalogUnavailable, Lease, LeaseCatalog, LeaseSignals
from gateway.errors import ERR, GatewayError
from gateway.renewals import Renewals
from gateway.runner import Runner

T = TypeVar("T")

# A PATCH body silent this long while its request waits for bytes has most likely lost
# its client (a phone that switched networks): a HEAD then asks its holder to let go.
# Shorter gaps are a live client between writes, which a HEAD leaves alone.
HEAD_TAKES_OVER_AFTER = 1.0


def lease_signals(catalog: object) -> LeaseSignals | None:
    """The catalog's lease signals, if it has them (`SignallingCatalog`; found by name
    so that wrappers passing attributes through, as metrics.instrument, keep them)."""
    make = getattr(catalog, "lease_signals", None)
    return cast(LeaseSignals, make()) if callable(make) else None


class StopReason(StrEnum):
    """Why a writer stopped reading its body early (`too-slow` is a fairness label too)."""

    RELEASED = "released"  # another request asked for the upload
    TIMEOUT = "timeout"  # no body bytes for network_timeout
    TOO_SLOW = "too-slow"  # the body came slower than min_rate over the window
    LEASE_LOST = "lease-lost"  # the lease was taken over, or the upload terminated
    SHUTDOWN = "shutdown"  # the server is stopping
    # The body ended early with no stop asked for (the client went away): the writer
    # reports it, `Control.stop` is never given it.
    DISCONNECTED = "disconnected"


@dataclass
class Control:
    """What a running writer watches: why it should stop, and when it last got bytes."""

    lease: Lease
    stop_reason: StopReason | None = None
    last_activity: float = field(default_factory=time.monotonic)
    received: int = 0  # body bytes read so far
    waited: float = 0.0  # seconds spent waiting for the client, reads done
    read_started: float = 0.0  # when the read in progress began
    # Called by the watcher while a read has waited a poll or more: the writer hands
    # what it gathered to sealing, so a stalled body holds no received bytes.
    on_idle: Callable[[], None] | None = None
    _in_receive: bool = False
    task: asyncio.Task[object] | None = None
    loaded: object = None  # what `held(load=...)` read as the lease was taken
    released: bool = False
    watcher: asyncio.Task[None] | None = None

    @property
    def in_receive(self) -> bool:
        """Whether the writer is waiting for body bytes right now."""
        return self._in_receive

    @in_receive.setter
    def in_receive(self, value: bool) -> None:
        if value and not self._in_receive:
            self.read_started = time.monotonic()
        self._in_receive = value

    def client_wait(self, now: float) -> float:
        """Seconds this body has spent waiting for the client, the read in progress too.

        Time the writer spends elsewhere (its reading paused for the budget or the
        sealing threads) is the server's, not the client's, and is not counted.
        """
        return self.waited + (now - self.read_started if self._in_receive else 0.0)

    def silent_for(self) -> float:
        """How long the writer has been waiting for body bytes (0 if it is not)."""
        return time.monotonic() - self.read_started if self._in_receive else 0.0

    def stop(self, reason: StopReason) -> None:
        """Ask the writer to stop reading; a read blocked on the network is cut.

        Only the first stop counts. Cancelling again before the writer ran would leave
        a second cancellation pending, and the request would die of it instead of
        saving what it received (the writer checks stop_reason before every read).
        """
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self.in_receive and self.task is not None and not self.task.done():
            self.task.cancel()


class Leases:
    """Leases live in the catalog so they hold across processes; this adds the fast path.

    A request for a busy upload flags a release request in the catalog (seen by any
    instance's holder within one poll) and, when the holder runs in this process,
    stops it at once — so a client that reconnects resumes in well under a second.
    With `signals` (a catalog shared by several processes, `SignallingCatalog`) a holder
    elsewhere stops as soon as it is asked, and a waiter here tries again as soon as
    the upload is let go, instead of at their next poll; polling stays as the fallback.

    Every holder renews its lease each poll until it lets go (the renewals of all the
    holders here gathered into one catalog call, `Renewals`), so a lease that has not
    been renewed for `stale_after` seconds belongs to a holder that is gone (a process
    killed mid-PATCH): the next request takes it over instead of waiting out the ttl,
    and a client resumes within seconds of a crash and restart. A takeover of a holder
    that is merely slow is safe: the fencing token makes its next commit fail.
    """

    def __init__(
        self,
        catalog: LeaseCatalog,
        runner: Runner,
        *,
        ttl: float,
        acquire_timeout: float,
        network_timeout: float,
        min_rate: float = 0.0,
        rate_window: float = 30.0,
        poll_interval: float = 0.5,
        stale_after: float = 5.0,
        clock: Callable[[], float] = time.time,
        signals: LeaseSignals | None = None,
        renew_window: float | None = None,
    ) -> None:
        self._catalog = catalog
        self._signals = signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = runner
        self._ttl = ttl
        self._acquire_timeout = acquire_timeout
        self._poll = poll_interval
        # Never shorter than a few renewals, never longer than the lease itself.
        self._stale_after = min(ttl, max(stale_after, 4 * poll_interval))
        self._network_timeout = network_timeout
        self._min_rate = min_rate
        self._rate_window = rate_window
        self._clock = clock
        # Holders' renewals, one catalog call per window (by default a fifth of a poll).
        self._renewals = Renewals(
            catalog,
            runner,
            ttl=ttl,
            window=poll_interval / 5 if renew_window is None else renew_window,
            clock=clock,
        )
        self._instance = secrets.token_hex(6)
        self._active: dict[str, Control] = {}
        self._starting: dict[str, int] = {}  # writers here on their way to a lease
        self._waiting: dict[str, set[asyncio.Event]] = {}  # set when the upload is let go
        self.shutting_down = False

    def start(self) -> None:
        """Listen to the catalog's signals, if any (on the event loop)."""
        if self._signals is not None:
            self._loop = asyncio.get_running_loop()
            self._signals.start(self._heard_release_requested, self._heard_released)

    def close(self) -> None:
        if self._signals is not None:
            self._signals.close()

    def _heard_release_requested(self, upload_id: str, token: int | None) -> None:
        """(listener thread) Someone asked for `upload_id` held with `token`: its writer
        here stops, if it is that holder or an older one."""
        if upload_id in self._active or upload_id in self._starting:
            self._hop(self._release_requested, upload_id, token)

    def _heard_released(self, upload_id: str) -> None:
        """(listener thread) `upload_id` was let go: requests here waiting try now."""
        if upload_id in self._waiting:
            self._hop(self._released, upload_id)

    def _hop(self, handler: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(handler, *args)

    def _release_requested(self, upload_id: str, token: int | None) -> None:
        # The request may come late: after the holder it asked let go and a newer
        # request here took the upload (its client's next PATCH). That one goes on.
        control = self._active.get(upload_id)
        if control is not None and (token is None or control.lease.token <= token):
            control.stop(StopReason.RELEASED)

    def _released(self, upload_id: str) -> None:
        for event in self._waiting.get(upload_id, ()):
            event.set()

    @property
    def takeover_wait(self) -> float:
        """Long enough to take over the lease of a holder that is gone."""
        return self._stale_after + self._poll

    def writing_here(self, upload_id: str) -> bool:
        """Whether a writer in this process holds the upload right now."""
        return upload_id in self._active

    async def acquire(self, upload_id: str, *, wait: float | None = None) -> Lease:
        """Take the upload's lease, asking its holder to let go; give up after `wait`
        seconds (default acquire_timeout; 0 makes a single attempt)."""
        lease, _ = await self._acquire(upload_id, wait, None, None)
        return lease

    async def read_between_writers(self, upload_id: str, read: Callable[[], T]) -> T | None:
        """`read` (on the catalog thread) at a moment no request writes the upload; for
        a tus HEAD, whose client resumes from the offset it answers.

        A writer in this process whose body has been silent for HEAD_TAKES_OVER_AFTER
        (already, or once it has been while the HEAD waits) is asked to let go, as a
        PATCH would ask it: its client is gone, and the offset read then includes what it saved, so
        the client's next PATCH fits. A writer still getting bytes is left alone
        (None: answer what is recorded). A holder in another process cannot be seen
        from here: it is asked through the catalog, as by a PATCH (tusd does the
        same), and the lease is taken and handed back in the catalog call that reads.
        None too if the holder kept the upload past acquire_timeout. With no holder at
        all, `read` runs at once, and nothing is written.
        """
        arrived = time.monotonic()
        deadline = arrived + self._acquire_timeout
        while True:
            # An attempt at the lease would ask any holder to let go: first watch a
            # writer here (one still taking its lease shows up in a moment).
            local = self._active.get(upload_id)
            if local is None and upload_id not in self._starting:
                # Nobody writes here: read at once unless a holder elsewhere has it.
                free, value = await self._runner.db(self._read_if_free, upload_id, read)
                if free:
                    return value
                break
            if local is not None and local.stop_reason is not None:
                break
            if time.monotonic() >= deadline:
                return None
            if local is not None:
                if local.last_activity > arrived:
                    return None  # bytes came after the HEAD did: its client is there
                if local.silent_for() >= HEAD_TAKES_OVER_AFTER:
                    local.stop(StopReason.RELEASED)
                    break
            await asyncio.sleep(0.02)
        wait = max(0.0, deadline - time.monotonic())
        try:
            _, loaded = await self._acquire(upload_id, wait, None, read, hand_back=True)
        except GatewayError as exc:
            if exc.err is ERR.UPLOAD_LOCKED:
                return None
            raise
        return cast(T, loaded)

    def _read_if_free(self, upload_id: str, read: Callable[[], T]) -> tuple[bool, T | None]:
        """`read`, if no one holds the upload's lease (catalog thread). Checked first:
        a holder that let go since committed all it had, so `read` sees it."""
        if self._catalog.lease_held(upload_id, self._clock()):
            return False, None
        return True, read()

    async def _acquire(
        self,
        upload_id: str,
        wait: float | None,
        check: Callable[[], None] | None,
        load: Callable[[], object] | None,
        *,
        hand_back: bool = False,
        ask_up_to: int | None = None,
    ) -> tuple[Lease, object]:
        """`acquire`, with `check` and `load` run on the catalog thread in the same call
        as each attempt (a hop fewer for each): `check` before it, raising to refuse
        the request before a holder is asked to let go; `load` right after the lease
        is taken, its result coming back with the lease. With `hand_back` the lease is
        released again in that same call, right after `load`."""
        # Registered before the first attempt: a release right after it is not missed.
        released = asyncio.Event()
        self._waiting.setdefault(upload_id, set()).add(released)
        try:
            return await self._attempts(
                upload_id, wait, check, load, hand_back, released, ask_up_to
            )
        finally:
            waiting = self._waiting[upload_id]
            waiting.discard(released)
            if not waiting:
                del self._waiting[upload_id]

    async def _attempts(
        self,
        upload_id: str,
        wait: float | None,
        check: Callable[[], None] | None,
        load: Callable[[], object] | None,
        hand_back: bool,
        released: asyncio.Event,
        ask_up_to: int | None,
    ) -> tuple[Lease, object]:
        holder = f"{self._instance}:{secrets.token_hex(6)}"
        started = time.monotonic()
        deadline = started + (self._acquire_timeout if wait is None else wait)
        # The token of the lease held when this request arrived: only holders up to it
        # are asked to let go. One taken since came after this request (its client's
        # next PATCH, say, while this one still waited): it is waited for, not stopped.
        # `ask_up_to`: the fencing counter as the request arrived, when it waited for
        # something else before its first attempt.
        arrived_at = ask_up_to
        asked = False
        while True:
            released.clear()
            # The catalog takes over a lease whose expiry is at or before `now`. Holders
            # renew to now + ttl, so asking "as of now + ttl - stale_after" takes over a
            # holder silent for stale_after; the new lease still expires at now + ttl.
            horizon = self._clock() + self._ttl - self._stale_after
            taken, loaded = await self._runner.db(
                self._take,
                upload_id,
                holder,
                self._stale_after,
                horizon,
                check,
                load,
                hand_back,
                arrived_at,
            )
            if isinstance(taken, Lease):
                metrics.LOCK_WAIT.observe(time.monotonic() - started)
                return taken, loaded
            if arrived_at is None:
                arrived_at = taken
            if not asked and taken <= arrived_at:
                asked = True
                metrics.RELEASE_REQUESTS.inc()
            local = self._active.get(upload_id)
            if local is not None and local.lease.token <= arrived_at:
                local.stop(StopReason.RELEASED)
            if time.monotonic() >= deadline:
                raise GatewayError(
                    ERR.UPLOAD_LOCKED, "another request is writing this upload; try again"
                )
            if local is not None:
                await asyncio.sleep(0.02)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), self._poll / 2)

    def _take(
        self,
        upload_id: str,
        holder: str,
        ttl: float,
        now: float,
        check: Callable[[], None] | None,
        load: Callable[[], object] | None,
        hand_back: bool = False,
        ask_up_to: int | None = None,
    ) -> tuple[Lease | int, object]:
        """`check`, one attempt at the lease, then `load` if it was taken (catalog thread);
        with `hand_back`, the lease is released again after `load`. Refused: the
        holder's token (asked to let go if it is at most `ask_up_to`, or always)."""
        if check is not None:
            check()
        lease = self._catalog.try_lease(upload_id, holder, ttl, now, ask_up_to=ask_up_to)
        if not isinstance(lease, Lease) or (load is None and not hand_back):
            return lease, None
        try:
            loaded = load() if load is not None else None
        except BaseException:
            self._catalog.release_lease(lease)
            raise
        if hand_back:
            self._catalog.release_lease(lease)
        return lease, loaded

    async def arrival_token(self) -> int:
        """The last fencing token handed out, by any process: a request that notes it
        before it waits (for a writer slot) later asks only holders that took the
        upload before it arrived (`held(ask_up_to=...)`)."""
        return await self._runner.db(self._catalog.last_fencing_token)

    async def release(self, lease: Lease) -> None:
        await self._runner.db(self._catalog.release_lease, lease)

    async def release_reading(self, control: Control, read: Callable[[], T]) -> T:
        """Hand the lease back early, and run `read` in the same catalog call, before
        the release (so it sees the upload as this holder left it)."""
        await self._stop_watching(control)
        control.released = True
        return await self._runner.db(self._release_after, control.lease, read)

    def _release_after(self, lease: Lease, read: Callable[[], T]) -> T:
        try:
            return read()
        finally:
            self._catalog.release_lease(lease)

    @contextlib.asynccontextmanager
    async def held(
        self,
        upload_id: str,
        *,
        watch: bool = False,
        wait: float | None = None,
        check: Callable[[], None] | None = None,
        load: Callable[[], object] | None = None,
        ask_up_to: int | None = None,
    ) -> AsyncIterator[Control]:
        """Hold the upload's lease for the block, renewing it; with `watch`, poll for stops.

        `check` runs before every attempt at the lease and may raise to refuse it. With
        `load`, `control.loaded` is what it read as the lease was taken. The block may
        hand the lease back early with `release_reading`. `ask_up_to` (the fencing
        counter when the request arrived, `arrival_token`): only a holder whose token is
        at most that is asked to let go; by default, the holder at the first attempt.
        """
        if watch:
            self._starting[upload_id] = self._starting.get(upload_id, 0) + 1
        try:
            lease, loaded = await self._acquire(upload_id, wait, check, load, ask_up_to=ask_up_to)
            control = Control(lease, task=asyncio.current_task(), loaded=loaded)
            if watch:
                self._active[upload_id] = control
                metrics.ACTIVE_UPLOADS.inc()
        finally:
            if watch:
                left = self._starting.pop(upload_id) - 1
                if left:
                    self._starting[upload_id] = left
        # Renewal goes on until the lease is handed back, also while a stopped writer
        # seals and records what it has: a silent holder counts as a dead one.
        control.watcher = asyncio.create_task(self._watch(control, stoppable=watch))
        try:
            yield control
        finally:
            await self._stop_watching(control)
            if watch:
                metrics.ACTIVE_UPLOADS.dec()
                if self._active.get(upload_id) is control:
                    del self._active[upload_id]
            if not control.released:
                control.released = True
                await self.release(control.lease)

    async def _stop_watching(self, control: Control) -> None:
        watcher, control.watcher = control.watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, control: Control, *, stoppable: bool) -> None:
        timeout = self._network_timeout
        samples: collections.deque[tuple[float, int]] = collections.deque()
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._poll)
            if stoppable and control.stop_reason is None:
                now = time.monotonic()
                if self.shutting_down:
                    control.stop(StopReason.SHUTDOWN)
                elif now - control.last_activity > timeout and control.in_receive:
                    control.stop(StopReason.TIMEOUT)
                elif self._too_slow(control, samples, now):
                    metrics.REFUSED.labels(StopReason.TOO_SLOW).inc()
                    control.stop(StopReason.TOO_SLOW)
                elif (
                    control.in_receive
                    and control.on_idle is not None
                    and now - control.read_started >= self._poll
                ):
                    control.on_idle()
            try:
                state = await self._renewals.renew(control.lease)
            except CatalogUnavailable:
                # Renewal is retried each poll. A holder that could not renew for the
                # stale window counts as gone to the others: it stops too (what it
                # saves then reaches the catalog once it is back, or is answered 503).
                if stoppable and time.monotonic() - renewed > self._stale_after:
                    control.stop(StopReason.LEASE_LOST)
                continue
            renewed = time.monotonic()
            if not state.valid:
                if stoppable:
                    control.stop(StopReason.LEASE_LOST)
                return
            if stoppable and state.release_requested and control.stop_reason is None:
                control.stop(StopReason.RELEASED)

    def _too_slow(
        self, control: Control, samples: collections.deque[tuple[float, int]], now: float
    ) -> bool:
        """Whether the body brought less than min_rate bytes/s over the last window of
        time spent waiting for the client (a trickle that never goes silent)."""
        if self._min_rate <= 0:
            return False
        waited = control.client_wait(now)
        samples.append((waited, control.received))
        window = self._rate_window
        # Keep the newest sample that is at least a window old, and those after it.
        while len(samples) > 1 and waited - samples[1][0] >= window:
            samples.popleft()
        first_wait, first_received = samples[0]
        span = waited - first_wait
        return span >= window and control.received - first_received < self._min_rate * span

    def stop_all(self) -> None:
        """Shutdown: every writer in this process stops reading and saves what it has."""
        self.shutting_down = True
        for control in list(self._active.values()):
            control.stop(StopReason.SHUTDOWN)
