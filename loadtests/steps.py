"""Stepped runs: users added in equal steps, each step's latency and throughput, and the
step at which the gateway stops keeping up (docs/LOAD.md, "Where it breaks")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Locust is not imported here: it patches the standard library
    from locust.env import Environment

ACK_LIMIT_MS = 1000.0  # the target: a chunk answered within 1 s of the gateway having it
TARGET_CHUNK = "2MiB"  # the size class the target names (sizes.size_class)


def schedule(users: int, duration: float, steps: int) -> list[tuple[int, float]]:
    """(users, seconds) for each step: `steps` equal rises to `users` over `duration`."""
    if steps <= 1:
        return [(users, duration)]
    return [(max(1, round(users * (i + 1) / steps)), duration / steps) for i in range(steps)]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class Step:
    users: int
    began: float
    ended: float = 0.0
    acks: list[float] = field(default_factory=list)  # ms, every acknowledged PATCH
    target_acks: list[float] = field(default_factory=list)  # ms, those of TARGET_CHUNK
    sent_bytes: int = 0  # body bytes the users sent to the gateways
    failures: int = 0

    @property
    def seconds(self) -> float:
        return max(1e-9, self.ended - self.began)

    @property
    def mb_s(self) -> float:
        return self.sent_bytes / self.seconds / 1e6

    @property
    def broken(self) -> bool:
        """Past the target: a failure, or the slowest 1 % of chunks acknowledged after
        more than 1 s (those of the target's size when there are any)."""
        acks = self.target_acks or self.acks
        return self.failures > 0 or percentile(acks, 0.99) > ACK_LIMIT_MS


class StepLog:
    """Request events sorted into the step in which they ended."""

    def __init__(
        self,
        environment: Environment,
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[Step], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_step = on_step  # told of each step as it ends
        self.steps: list[Step] = []
        environment.events.request.add_listener(self._on_request)  # type: ignore[no-untyped-call]

    def begin(self, users: int) -> None:
        now = self._clock()
        self._close(now)
        self.steps.append(Step(users, now))

    def end(self) -> None:
        self._close(self._clock())

    def _close(self, now: float) -> None:
        if self.steps and not self.steps[-1].ended:
            self.steps[-1].ended = now
            if self._on_step is not None:
                self._on_step(self.steps[-1])

    def _on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        if not self.steps or self.steps[-1].ended:
            return  # after the last step: the drain
        step = self.steps[-1]
        if exception is not None:
            step.failures += 1
        if request_type == "ACK":
            step.acks.append(response_time)
            if name == TARGET_CHUNK:
                step.target_acks.append(response_time)
        elif request_type in ("PATCH", "CUT", "STOP"):
            step.sent_bytes += response_length


HEADER = (
    f"{'users':>6} {'secs':>5} {'MB/s':>6} {'acks':>6} {'ack_p50':>8} {'ack_p99':>8} "
    f"{'p99_' + TARGET_CHUNK:>9} {'fails':>6}"
)


def row(s: Step) -> str:
    return (
        f"{s.users:>6} {s.seconds:>5.0f} {s.mb_s:>6.1f} {len(s.acks):>6} "
        f"{percentile(s.acks, 0.5):>8.0f} {percentile(s.acks, 0.99):>8.0f} "
        f"{percentile(s.target_acks, 0.99):>9.0f} {s.failures:>6}"
    )


def verdict(steps: list[Step]) -> str:
    broken = next((s for s in steps if s.broken), None)
    if broken is None:
        return f"held at every step: no failure, ACK p99 within {ACK_LIMIT_MS:.0f} ms"
    why = "failures" if broken.failures else f"ACK p99 above {ACK_LIMIT_MS:.0f} ms"
    return f"breaks at users={broken.users}: {why}"


def table(steps: list[Step]) -> str:
    return "\n".join([HEADER, *(row(s) for s in steps), verdict(steps)])
