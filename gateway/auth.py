"""Authentication: a bearer credential, an API key or an OIDC access token, to a Principal.

API keys (`gwt_...`) are minted once, stored as SHA-256 hashes and looked up in the
catalog on every request: revocation and expiry take effect on the next request in
every process (no cache). OIDC access tokens are checked by gateway/oidc.py. Failed
authentications are limited per client address and key prefix (gateway/bruteforce.py)
and reported to an optional hook (the audit log).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.bruteforce import AuthFailure, AuthFailureHook, BruteForceGuard
from gateway.catalog.base import ApiKey, Principal, TokenStore
from gateway.errors import ERR, GatewayError
from gateway.limits import RequestRate
from gateway.oidc import OidcRejected, OidcVerifier, ProviderUnavailable, looks_like_jwt
from gateway.runner import Runner

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

TOKEN_PREFIX = "gwt_"
PREFIX_CHARS = 8  # characters after TOKEN_PREFIX that the brute-force limit counts by
LAST_USED_EVERY = 60.0  # seconds: a key's last-used time is written at most this often
log = logging.getLogger("gateway.auth")


def token_hash(token: str) -> bytes:
    # Tokens carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8")).digest()


def mint_api_key(
    catalog: TokenStore,
    principal: Principal,
    *,
    expires_at: float | None = None,
    now: float | None = None,
) -> tuple[str, str]:
    """Create an API key for `principal`: (its id, the token). Only the token's hash is
    stored; the caller shows the token once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time() if now is None else now
    token_id = catalog.add_token(
        token_hash(token), principal, now, token_id=secrets.token_hex(8), expires_at=expires_at
    )
    return token_id, token


def describe_key(key: ApiKey) -> dict[str, str | None]:
    """What may be shown of an API key (never the key or its hash): `gateway token list`
    and GET /admin/tokens."""
    return {
        "id": key.id,
        "principal": key.principal.id,
        "tenant": key.principal.tenant,
        "roles": ",".join(sorted(key.principal.roles)),
        "created": rfc3339_seconds(key.created_at),
        "expires": rfc3339_seconds(key.expires_at),
        "last_used": rfc3339_seconds(key.last_used_at),
        "revoked": rfc3339_seconds(key.revoked_at),
    }


def rfc3339_seconds(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def mint_token(catalog: TokenStore, principal: Principal) -> str:
    """An API key for `principal` that never expires; only its hash is stored."""
    return mint_api_key(catalog, principal)[1]


def key_prefix(token: str) -> str | None:
    """What the brute-force limit counts an API key by (None for anything else)."""
    if token.startswith(TOKEN_PREFIX) and len(token) > len(TOKEN_PREFIX):
        return token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + PREFIX_CHARS]
    return None


class _Refused(Exception):
    def __init__(self, error: GatewayError, failure: AuthFailure) -> None:
        super().__init__(error.detail)
        self.error = error
        self.failure = failure


class Authenticator:
    def __init__(
        self,
        catalog: TokenStore,
        runner: Runner,
        rate: RequestRate | None = None,
        *,
        oidc: OidcVerifier | None = None,
        guard: BruteForceGuard | None = None,
        on_failure: AuthFailureHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._rate = rate  # each principal's requests, counted once it is known
        self._oidc = oidc
        self._guard = guard
        self._on_failure = on_failure
        self._clock = clock

    async def principal(self, authorization: list[str], *, client: str = "") -> Principal:
        """The principal the request's bearer credential names; 401, 429 or 503 if none.

        `client` is the client's address (after trusted proxies), for the brute-force limit.
        """
        try:
            token = _bearer(authorization)
        except GatewayError:
            # Reported (the audit log wants every refusal) but not counted: no guess.
            self._report(AuthFailure(client, "none", "no-credential"))
            raise
        prefix = key_prefix(token)
        if self._guard is not None:
            try:
                self._guard.check(client, prefix)
            except GatewayError:
                self._report(AuthFailure(client, _kind(token), "throttled", throttled=True))
                raise
        try:
            if self._oidc is not None and looks_like_jwt(token):
                found = await self._signed_in(token, client)
            else:
                found = await self._api_key(token, client)
        except _Refused as refused:
            if self._guard is not None:
                self._guard.failed(client, prefix)
            self._report(refused.failure)
            raise refused.error from None
        if self._rate is not None:
            self._rate.take(principal_key(found))
        return found

    async def _signed_in(self, token: str, client: str) -> Principal:
        assert self._oidc is not None
        try:
            return await self._oidc.principal(token)
        except OidcRejected as exc:
            err = ERR.TOKEN_EXPIRED if exc.reason == "expired" else ERR.UNAUTHORIZED
            failure = AuthFailure(client, "oidc", exc.reason)
            raise _Refused(_unauthorized(exc.sentence, err), failure) from None
        except ProviderUnavailable:
            raise GatewayError(
                ERR.IDENTITY_PROVIDER_UNAVAILABLE,
                "the identity provider's keys cannot be fetched; retry shortly",
                headers={"Retry-After": "5"},
            ) from None

    async def _api_key(self, token: str, client: str) -> Principal:
        if not token.startswith(TOKEN_PREFIX):
            raise _Refused(
                _unauthorized("the token is not valid"), AuthFailure(client, "malformed", "unknown")
            )
        key = await self._runner.db(self._catalog.api_key, token_hash(token))
        if key is None:
            raise _Refused(
                _unauthorized("the token is not valid"), AuthFailure(client, "api-key", "unknown")
            )
        now = self._clock()
        if key.revoked_at is not None:
            raise _Refused(
                _unauthorized("the token was revoked", ERR.TOKEN_REVOKED),
                AuthFailure(client, "api-key", "revoked", key_id=key.id),
            )
        if key.expires_at is not None and now >= key.expires_at:
            raise _Refused(
                _unauthorized("the token has expired", ERR.TOKEN_EXPIRED),
                AuthFailure(client, "api-key", "expired", key_id=key.id),
            )
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY:
            try:
                await self._runner.db(self._catalog.token_used, key.id, now, every=LAST_USED_EVERY)
            except Exception as exc:  # a busy catalog must not refuse a valid key
                log.warning("cannot record the use of API key %s: %s", key.id, exc)
        return key.principal

    def _report(self, failure: AuthFailure) -> None:
        if self._on_failure is not None:
            self._on_failure(failure)


def client_of(request: HTTPConnection) -> str:
    """The client's address (uvicorn has applied the trusted proxies' X-Forwarded-For)."""
    return request.client.host if request.client is not None else ""


def principal_key(principal: Principal) -> str:
    """One string per principal, for the per-principal limits."""
    return f"{principal.tenant}\x00{principal.id}"


def _bearer(authorization: list[str]) -> str:
    if len(authorization) != 1:
        raise _unauthorized("send exactly one 'Authorization: Bearer <token>' header")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 16 * 1024:
        raise _unauthorized("send 'Authorization: Bearer <token>'")
    return token


def _kind(token: str) -> str:
    if token.startswith(TOKEN_PREFIX):
        return "api-key"
    return "oidc" if looks_like_jwt(token) else "malformed"


def _unauthorized(sentence: str, err: ERR = ERR.UNAUTHORIZED) -> GatewayError:
    metrics.AUTH_FAILURES.inc()
    return GatewayError(err, sentence, headers={"WWW-Authenticate": 'Bearer realm="gateway"'})
