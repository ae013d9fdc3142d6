"""Brute-force limiting: failed authentications per client address and per token prefix.

Each client address (an IPv6 address counts by its /64) and each API key prefix (the
first characters after `gwt_`) may fail `burst` times at once, and regains `per_minute`
failures a minute. While either is spent, every authentication from that address or
with that prefix, valid or not, is answered 429 ERR_AUTH_THROTTLED with Retry-After:
a guesser learns nothing more until the window passes.

Kept in memory, like `RequestRate`: with `--workers N` each worker counts its own.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import metrics
from gateway.errors import ERR, GatewayError

_MAX_ENTRIES = 100_000  # beyond this, entries that have regained everything are dropped


@dataclass(frozen=True)
class AuthFailure:
    """What a failed authentication leaves for the audit log: never the credential."""

    client: str  # the client address ("" if unknown)
    kind: str  # "api-key", "oidc", "malformed" (neither) or "none" (no usable header)
    reason: str  # a short stable word: "unknown", "revoked", "expired", "invalid", ...
    key_id: str | None = None  # an API key's id, when the key exists (revoked, expired)
    throttled: bool = False  # refused 429 before the credential was even looked at


AuthFailureHook = Callable[[AuthFailure], None]


class FailureLimit:
    """A token bucket of allowed failures per key (an address or a prefix)."""

    def __init__(
        self, burst: int, per_minute: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = max(1, burst)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (allowance, when)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _allowance(self, key: str, now: float) -> float:
        allowance, when = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), allowance + (now - when) * self.rate)

    def retry_after(self, key: str) -> int:
        """0 if `key` may try now, else the seconds until it may try again."""
        if not self.enabled or key not in self._buckets:
            return 0
        allowance = self._allowance(key, self._clock())
        if allowance >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - allowance) / self.rate))

    def failed(self, key: str) -> None:
        if not self.enabled:
            return
        now = self._clock()
        self._buckets[key] = (max(0.0, self._allowance(key, now) - 1.0), now)
        if len(self._buckets) > _MAX_ENTRIES:
            self._forget(now)

    def _forget(self, now: float) -> None:
        full = [k for k in self._buckets if self._allowance(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) > _MAX_ENTRIES:  # all spent: drop the oldest
            del self._buckets[next(iter(self._buckets))]


class BruteForceGuard:
    """Checks both limits before a credential is looked at; counts failures after."""

    def __init__(self, limit_addresses: FailureLimit, limit_prefixes: FailureLimit) -> None:
        self._addresses = limit_addresses
        self._prefixes = limit_prefixes

    def check(self, client: str, prefix: str | None) -> None:
        """Raise 429 ERR_AUTH_THROTTLED if the address or the prefix has failed too often."""
        wait = self._addresses.retry_after(address_key(client))
        which = "address"
        if prefix is not None:
            prefix_wait = self._prefixes.retry_after(prefix)
            if prefix_wait > wait:
                wait, which = prefix_wait, "prefix"
        if wait:
            metrics.AUTH_THROTTLED.labels(which).inc()
            raise GatewayError(
                ERR.AUTH_THROTTLED,
                "too many failed authentications; wait before trying again",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, client: str, prefix: str | None) -> None:
        self._addresses.failed(address_key(client))
        if prefix is not None:
            self._prefixes.failed(prefix)


def address_key(client: str) -> str:
    """The client's address, an IPv6 one cut to its /64 (one host's usual share)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
