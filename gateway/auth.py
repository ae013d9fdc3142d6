"""Bearer tokens: minted once, stored as SHA-256 hashes, checked on every request."""

from __future__ import annotations

import hashlib
import secrets
import time

from gateway import metrics
from gateway.catalog.base import Principal, TokenStore
from gateway.errors import ERR, GatewayError
from gateway.limits import RequestRate
from gateway.runner import Runner

TOKEN_PREFIX = "gwt_"
_CACHE_SECONDS = 30.0


def token_hash(token: str) -> bytes:
    # Tokens carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8")).digest()


def mint_token(catalog: TokenStore, principal: Principal) -> str:
    """Create a token for `principal`; only its hash is stored, the caller shows it once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    catalog.add_token(token_hash(token), principal, time.time())
    return token


class Authenticator:
    def __init__(
        self, catalog: TokenStore, runner: Runner, rate: RequestRate | None = None
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._rate = rate  # each principal's requests, counted once it is known
        self._cache: dict[bytes, tuple[float, Principal]] = {}

    async def principal(self, authorization: list[str]) -> Principal:
        if len(authorization) != 1:
            raise _unauthorized("send exactly one 'Authorization: Bearer <token>' header")
        scheme, _, token = authorization[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            raise _unauthorized("send 'Authorization: Bearer <token>'")
        digest = token_hash(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            looked_up = await self._runner.db(self._catalog.principal_for, digest)
            if looked_up is None:
                raise _unauthorized("the token is not valid")
            found = looked_up
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + _CACHE_SECONDS, found)
        if self._rate is not None:
            self._rate.take(principal_key(found))
        return found


def principal_key(principal: Principal) -> str:
    """One string per principal, for the per-principal limits."""
    return f"{principal.tenant}\x00{principal.id}"


def _unauthorized(sentence: str) -> GatewayError:
    metrics.AUTH_FAILURES.inc()
    return GatewayError(
        ERR.UNAUTHORIZED, sentence, headers={"WWW-Authenticate": 'Bearer realm="gateway"'}
    )
