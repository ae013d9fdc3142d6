"""OIDC sign-in: access tokens (JWTs) from the hospital's identity provider, checked
against its JWKS, and the principal their claims name.

A token is accepted only if, in this order:
  - its header's `alg` is RS256, ES256 or EdDSA (never `none`, never HMAC: a provider's
    public key is not a secret) and it names a `kid`;
  - its (not yet verified) `iss` is the configured issuer, so that strangers' tokens
    never make us fetch anything;
  - the provider's JWKS holds that `kid` (fetched on first use, then again when older than
    `max_age`, or at most once every `refresh` seconds when a token names an unknown `kid`:
    the provider rotated its keys), and its signature verifies with that key under `alg`;
  - `iss`, `aud` (contains the audience), `exp`, `sub` are present and right, `nbf` and
    `iat` are not in the future, with `leeway` seconds of clock skew.

Principal: `sub` is its id, the tenant and roles claims (names, or dotted paths such as
`realm_access.roles`) give its tenant and roles (only roles of gateway/roles.py count),
and `mfa` is true when `amr` shows a second factor or `acr` is one of the configured values.
Fetches run on the runner's I/O threads, never on the event loop, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
)
from joserfc.jwk import JWKRegistry, Key

from gateway import metrics, roles
from gateway.catalog.base import Principal
from gateway.config import Settings, check_oidc_url

log = logging.getLogger("gateway.oidc")

ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
# RFC 8176 methods that are a factor beyond a password; "mfa" itself says several were used.
SECOND_FACTORS = frozenset(
    {"otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "pin", "sc"}
)
MAX_DOCUMENT_BYTES = 1 << 20
MAX_TOKEN_CHARS = 16 * 1024
_MAX_ID_CHARS = 256


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str = ""  # "": discovered from the issuer
    tenant_claim: str = "tenant"
    default_tenant: str = ""
    roles_claim: str = "roles"
    mfa_acr: frozenset[str] = frozenset()
    leeway: int = 60
    refresh: float = 60.0
    max_age: float = 3600.0
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        if not settings.oidc_issuer:
            return None
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            tenant_claim=settings.oidc_tenant_claim,
            default_tenant=settings.oidc_default_tenant,
            roles_claim=settings.oidc_roles_claim,
            mfa_acr=settings.oidc_mfa_acr_values,
            leeway=settings.oidc_leeway,
            refresh=settings.oidc_jwks_refresh,
            max_age=settings.oidc_jwks_max_age,
            timeout=settings.oidc_timeout,
        )


class OidcRejected(Exception):
    """The token is not acceptable; `reason` is a stable word for logs and the audit log."""

    def __init__(self, reason: str, sentence: str) -> None:
        super().__init__(sentence)
        self.reason = reason
        self.sentence = sentence


class ProviderUnavailable(Exception):
    """Neither the JWKS nor a copy of it is at hand: the provider could not be reached."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


# -- fetching ----------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect could lead to plain http elsewhere: treat it as a failure


_OPENER = urllib.request.build_opener(_NoRedirects)


def fetch_json(url: str, timeout: float) -> object:
    """GET a JSON document (blocking; run it on an I/O thread), at most 1 MiB, all of it
    within `timeout` seconds (a server sending a byte at a time is cut off too)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    body = bytearray()
    with _OPENER.open(request, timeout=timeout) as response:
        while chunk := response.read1(65536):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} took longer than {timeout} s")
    return json.loads(body)


Fetch = Callable[[str], Awaitable[object]]


class JwksCache:
    """The provider's signing keys by `kid`, fetched with `fetch` (async, off the loop)."""

    def __init__(
        self, config: OidcConfig, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._fetch = fetch
        self._clock = clock
        self._jwks_url = config.jwks_url
        self._keys: dict[str, Key] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Key | None:
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._config.max_age
        unknown = kid not in self._keys
        may_try = self._tried_at is None or now - self._tried_at >= self._config.refresh
        if (stale or unknown) and may_try:
            await self._refresh(now)
        elif unknown and self._lock.locked():
            async with self._lock:  # a fetch is under way: its keys may hold this kid
                pass
        if self._fetched_at is None:
            raise ProviderUnavailable("the identity provider's keys could not be fetched")
        return self._keys.get(kid)

    async def _refresh(self, asked_at: float) -> None:
        async with self._lock:
            if self._tried_at is not None and self._tried_at >= asked_at:
                return  # another request refreshed while this one waited
            self._tried_at = self._clock()
            try:
                url = await self._url()
                keys = _signing_keys(await self._fetch(url))
            except (OSError, HTTPException, ValueError, TypeError, KeyError) as exc:
                metrics.OIDC_JWKS_FETCHES.labels("error").inc()
                log.warning(
                    "cannot fetch the identity provider's keys (%s); %s",
                    exc,
                    "keeping the ones at hand" if self._keys else "OIDC sign-in refused",
                )
                return
            metrics.OIDC_JWKS_FETCHES.labels("ok").inc()
            self._keys = keys
            self._fetched_at = self._tried_at

    async def _url(self) -> str:
        if self._jwks_url:
            return self._jwks_url
        issuer = self._config.issuer
        document = await self._fetch(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise ValueError("the discovery document names another issuer")
        url = document.get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError("the discovery document has no jwks_uri")
        check_oidc_url("jwks_uri of the discovery document", url)
        self._jwks_url = url
        return url


def _signing_keys(document: object) -> dict[str, Key]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the JWKS is not an object with a 'keys' list")
    keys: dict[str, Key] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:
            continue  # encryption keys, and private keys a provider should never publish
        try:
            keys[entry["kid"]] = JWKRegistry.import_key(entry)
        except (JoseError, ValueError, TypeError):
            continue  # a key type we do not use
    return keys


# -- verifying ---------------------------------------------------------------------------


class OidcVerifier:
    def __init__(
        self, config: OidcConfig, jwks: JwksCache, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._jwks = jwks
        self._clock = clock

    async def principal(self, token: str) -> Principal:
        """The principal of a valid access token; OidcRejected or ProviderUnavailable."""
        if len(token) > MAX_TOKEN_CHARS:
            raise OidcRejected("malformed", "the token is too long")
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = compact.headers()
            unverified = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            raise OidcRejected("malformed", "the token is not a signed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise OidcRejected("algorithm", "the token's algorithm is not accepted")
        if not isinstance(kid, str):
            raise OidcRejected("no-key-id", "the token names no key (kid)")
        if not isinstance(unverified, dict) or unverified.get("iss") != self.config.issuer:
            raise OidcRejected("issuer", "the token is from another issuer")
        key = await self._jwks.key(kid)  # ProviderUnavailable passes through
        if key is None or key.alg not in (None, alg):
            raise OidcRejected("unknown-key", "the token is signed with an unknown key")
        claims = self._verified_claims(token, key, str(alg))
        return principal_from_claims(claims, self.config)

    def _verified_claims(self, token: str, key: Key, alg: str) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                # joserfc warns that "EdDSA" is superseded by "Ed25519" (RFC 9864); providers
                # still sign with "EdDSA", which we accept on purpose.
                warnings.simplefilter("ignore", SecurityWarning)
                decoded = jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError):
            raise OidcRejected("signature", "the token's signature is not valid") from None
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self.config.leeway,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise OidcRejected("expired", "the token has expired") from None
        except MissingClaimError as exc:
            raise OidcRejected("missing-claim", f"the token has no {exc.claim}") from None
        except InvalidClaimError as exc:
            reason = {"aud": "audience", "iss": "issuer", "nbf": "not-yet-valid"}.get(
                exc.claim, "invalid-claim"
            )
            raise OidcRejected(reason, f"the token's {exc.claim} is not acceptable") from None
        return decoded.claims


def principal_from_claims(claims: Mapping[str, Any], config: OidcConfig) -> Principal:
    """The principal verified claims name: `sub`, tenant, roles and mfa (see the module)."""
    sub = claims.get("sub")
    if not _is_id(sub):
        raise OidcRejected("missing-claim", "the token's sub is not a usable id")
    tenant = claim(claims, config.tenant_claim) if config.tenant_claim else None
    if tenant is None and config.default_tenant:
        tenant = config.default_tenant
    if not _is_id(tenant):
        raise OidcRejected("no-tenant", f"the token has no usable {config.tenant_claim} claim")
    return Principal(
        id=str(sub),
        tenant=str(tenant),
        roles=roles_from(claim(claims, config.roles_claim) if config.roles_claim else None),
        mfa=has_second_factor(claims, config.mfa_acr),
    )


def claim(claims: Mapping[str, Any], name: str) -> object:
    """The claim `name`, or, if there is none by that name, the dotted path through
    nested objects (`realm_access.roles`). Claim names with dots (URLs) come first."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_from(value: object) -> frozenset[str]:
    """A list of role names or a space-separated string; names unknown to us are ignored."""
    if isinstance(value, str):
        names: list[object] = list(value.split())
    elif isinstance(value, list):
        names = value
    else:
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str) and n in roles.ROLES)


def has_second_factor(claims: Mapping[str, Any], mfa_acr: frozenset[str]) -> bool:
    """`amr` holds "mfa", or two methods or more of which one is a second factor
    (RFC 8176: otp, hwk, sms, fpt, face, pin, ...); or `acr` is one of `mfa_acr`."""
    acr = claims.get("acr")
    if isinstance(acr, str) and acr in mfa_acr:
        return True
    amr = claims.get("amr")
    if not isinstance(amr, list):
        return False
    methods = {m for m in amr if isinstance(m, str)}
    return "mfa" in methods or (len(methods) >= 2 and bool(methods & SECOND_FACTORS))


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS and value.isprintable()
