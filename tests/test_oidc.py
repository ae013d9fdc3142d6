"""gateway/oidc.py and the OIDC settings: claim mapping, the JWKS cache's refresh rules,
and which issuer and JWKS URLs are accepted."""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.oidc import (
    Fetch,
    JwksCache,
    OidcConfig,
    OidcRejected,
    OidcVerifier,
    ProviderUnavailable,
    claim,
    fetch_json,
    has_second_factor,
    principal_from_claims,
    roles_from,
)
from tests.oidc_server import AUDIENCE, OidcProvider, running_provider

CONFIG = OidcConfig(issuer="https://idp.example.org/realms/h", audience=AUDIENCE)


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    """Keys and tokens only: these tests fetch through a fake, never over HTTP."""
    with running_provider() as p:
        yield p


# -- claims -> principal -------------------------------------------------------------


def test_sub_tenant_and_roles_make_the_principal() -> None:
    p = principal_from_claims({"sub": "u-1", "tenant": "north", "roles": ["reader"]}, CONFIG)
    assert (p.id, p.tenant, p.roles, p.mfa) == ("u-1", "north", frozenset({"reader"}), False)


def test_roles_are_a_list_or_a_space_separated_string_and_unknown_ones_are_ignored() -> None:
    assert roles_from(["reader", "admin", "superuser", 7]) == {"reader", "admin"}
    assert roles_from("uploader auditor  wizard") == {"uploader", "auditor"}
    assert roles_from(None) == frozenset()
    assert roles_from({"admin": True}) == frozenset()


def test_claims_are_found_by_name_first_then_by_dotted_path() -> None:
    claims = {
        "https://example.org/tenant": "south",
        "realm_access": {"roles": ["admin"]},
        "a": {"b": 1},
    }
    assert claim(claims, "https://example.org/tenant") == "south"
    assert claim(claims, "realm_access.roles") == ["admin"]
    assert claim(claims, "realm_access.missing") is None
    assert claim(claims, "a.b.c") is None
    config = OidcConfig(
        issuer="https://i", audience="a", tenant_claim="https://example.org/tenant",
        roles_claim="realm_access.roles",
    )  # fmt: skip
    p = principal_from_claims({"sub": "s", **claims}, config)
    assert (p.tenant, p.roles) == ("south", frozenset({"admin"}))


def test_a_token_without_a_tenant_is_refused_unless_a_default_tenant_is_set() -> None:
    with pytest.raises(OidcRejected) as exc:
        principal_from_claims({"sub": "s"}, CONFIG)
    assert exc.value.reason == "no-tenant"
    config = OidcConfig(issuer="https://i", audience="a", default_tenant="hospital")
    assert principal_from_claims({"sub": "s"}, config).tenant == "hospital"


@pytest.mark.parametrize("sub", [None, "", 5, "x" * 257, "a\x00b", "line\nbreak"])
def test_an_unusable_sub_is_refused(sub: object) -> None:
    with pytest.raises(OidcRejected):
        principal_from_claims({"sub": sub, "tenant": "t"}, CONFIG)


@pytest.mark.parametrize(
    ("claims", "mfa"),
    [
        ({"amr": ["mfa"]}, True),
        ({"amr": ["pwd", "otp"]}, True),
        ({"amr": ["hwk", "pin"]}, True),
        ({"amr": ["pwd", "fpt"]}, True),
        ({"amr": ["pwd"]}, False),
        ({"amr": ["otp"]}, False),  # one method alone is one factor
        ({"amr": ["pwd", "kba"]}, False),  # two methods, neither a second factor
        ({"amr": "mfa"}, False),  # amr is a list by definition
        ({"acr": "urn:mfa"}, True),
        ({"acr": "urn:basic"}, False),
        ({}, False),
    ],
)
def test_mfa_from_amr_or_a_configured_acr(claims: dict[str, object], mfa: bool) -> None:
    assert has_second_factor(claims, frozenset({"urn:mfa"})) is mfa


# -- the JWKS cache ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _provider_fetch(provider: OidcProvider, calls: list[str], fail: list[bool]) -> Fetch:
    async def fetch(url: str) -> object:
        calls.append(url)
        if fail[0]:
            raise OSError("connection refused")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": CONFIG.issuer, "jwks_uri": "https://idp.example.org/jwks"}
        return provider.jwks()

    return fetch


async def test_unknown_kids_refetch_at_most_once_per_refresh_interval(
    provider: OidcProvider,
) -> None:
    first = provider.add_key("ES256")
    calls: list[str] = []
    clock = Clock()
    cache = JwksCache(CONFIG, _provider_fetch(provider, calls, [False]), clock=clock)
    assert (await cache.key(first)) is not None
    assert calls == [
        CONFIG.issuer + "/.well-known/openid-configuration",
        "https://idp.example.org/jwks",
    ]
    for _ in range(50):
        assert (await cache.key("nope")) is None
    assert len(calls) == 2  # within the interval: no refetch at all
    rotated = provider.add_key("RS256")
    clock.now += CONFIG.refresh
    assert (await cache.key(rotated)) is not None  # one refetch finds the new key
    assert len(calls) == 3  # discovery is not fetched again
    for _ in range(50):
        assert (await cache.key("nope-again")) is None
    assert len(calls) == 3
    clock.now += CONFIG.max_age
    assert (await cache.key(first)) is not None  # known, but the copy is old: refetched
    assert len(calls) == 4


async def test_a_provider_out_of_reach_is_unavailable_then_its_old_keys_are_kept(
    provider: OidcProvider,
) -> None:
    kid = provider.add_key("ES256")
    calls: list[str] = []
    fail = [True]
    clock = Clock()
    cache = JwksCache(CONFIG, _provider_fetch(provider, calls, fail), clock=clock)
    with pytest.raises(ProviderUnavailable):
        await cache.key(kid)
    with pytest.raises(ProviderUnavailable):
        await cache.key(kid)
    assert len(calls) == 1  # failures are rate-limited too
    fail[0] = False
    clock.now += CONFIG.refresh
    assert (await cache.key(kid)) is not None
    fail[0] = True
    clock.now += CONFIG.max_age
    assert (await cache.key(kid)) is not None  # stale, but better than nothing


async def test_requests_arriving_during_the_first_fetch_wait_for_it(
    provider: OidcProvider,
) -> None:
    kid = provider.add_key("ES256")
    calls: list[str] = []

    async def fetch(url: str) -> object:
        calls.append(url)
        await asyncio.sleep(0.05)
        return provider.jwks()

    config = OidcConfig(issuer=CONFIG.issuer, audience=AUDIENCE, jwks_url="https://i/jwks")
    cache = JwksCache(config, fetch)
    keys = await asyncio.gather(*[cache.key(kid) for _ in range(10)])
    assert all(k is not None for k in keys) and calls == ["https://i/jwks"]


def test_fetches_follow_no_redirect_and_read_at_most_a_mebibyte(provider: OidcProvider) -> None:
    assert fetch_json(provider.issuer + "/jwks", 5) == {"keys": []}
    with pytest.raises(urllib.error.HTTPError):
        fetch_json(provider.issuer + "/redirect", 5)
    with pytest.raises(ValueError, match="more than"):
        fetch_json(provider.issuer + "/big", 5)


async def test_a_discovery_document_naming_another_issuer_is_not_used() -> None:
    calls: list[str] = []

    async def fetch(url: str) -> object:
        calls.append(url)
        return {"issuer": "https://evil.example.org", "jwks_uri": "https://evil.example.org/j"}

    with pytest.raises(ProviderUnavailable):
        await JwksCache(CONFIG, fetch).key("k")
    assert calls == [CONFIG.issuer + "/.well-known/openid-configuration"]


async def test_a_discovered_plain_http_jwks_elsewhere_is_not_fetched() -> None:
    calls: list[str] = []

    async def fetch(url: str) -> object:
        calls.append(url)
        return {"issuer": CONFIG.issuer, "jwks_uri": "http://idp.example.org/jwks"}

    with pytest.raises(ProviderUnavailable):
        await JwksCache(CONFIG, fetch).key("k")
    assert len(calls) == 1


async def test_tokens_from_another_issuer_never_cause_a_fetch(provider: OidcProvider) -> None:
    calls: list[str] = []

    async def fetch(url: str) -> object:
        calls.append(url)
        return {"keys": []}

    kid = provider.add_key("RS256")
    verifier = OidcVerifier(CONFIG, JwksCache(CONFIG, fetch))
    with pytest.raises(OidcRejected) as exc:
        await verifier.principal(provider.token(kid))  # iss is the test provider's
    assert exc.value.reason == "issuer" and calls == []


# -- settings ------------------------------------------------------------------------


def _settings(tmp_path: Path, **env: str) -> object:
    return load_settings(
        {"data_dir": tmp_path}, {f"GATEWAY_{k.upper()}": v for k, v in env.items()}
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.org/realms/h",
        "http://127.0.0.1:8080",
        "http://127.5.6.7/x",
        "http://localhost:9000/",
        "http://[::1]:9000",
    ],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(tmp_path: Path, url: str) -> None:
    _settings(tmp_path, oidc_issuer=url, oidc_audience="a", oidc_jwks_url=url + "/jwks")


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.org",
        "http://10.0.0.5",
        "http://[::2]",
        "http://localhost.example.org",
        "ftp://idp.example.org",
        "https://",
        "https://user@idp.example.org",
    ],
)
def test_plain_http_elsewhere_is_a_config_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OIDC_ISSUER"):
        _settings(tmp_path, oidc_issuer=url, oidc_audience="a")
    with pytest.raises(ConfigError, match="GATEWAY_OIDC_JWKS_URL"):
        _settings(
            tmp_path, oidc_issuer="https://idp.example.org", oidc_audience="a", oidc_jwks_url=url
        )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"oidc_issuer": "https://i.example.org"}, "GATEWAY_OIDC_AUDIENCE"),
        ({"oidc_jwks_url": "https://i.example.org/j"}, "need GATEWAY_OIDC_ISSUER"),
        ({"oidc_audience": "a"}, "need GATEWAY_OIDC_ISSUER"),
        ({"oidc_leeway": "600"}, "oidc_leeway"),
        ({"oidc_jwks_refresh": "0.5"}, "oidc_jwks_refresh"),
        ({"oidc_jwks_refresh": "120", "oidc_jwks_max_age": "60"}, "oidc_jwks_max_age"),
        ({"oidc_timeout": "0"}, "oidc_timeout"),
        ({"auth_failure_burst": "0"}, "auth_failure_burst"),
        ({"auth_failure_rate": "-1"}, "auth_failure_rate"),
    ],
)
def test_identity_settings_are_checked(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, **env)


def test_without_a_tenant_claim_a_default_tenant_is_needed(tmp_path: Path) -> None:
    env = {"GATEWAY_OIDC_ISSUER": "https://i.example.org", "GATEWAY_OIDC_AUDIENCE": "a"}
    with pytest.raises(ConfigError, match="GATEWAY_OIDC_DEFAULT_TENANT"):
        load_settings({"data_dir": tmp_path, "oidc_tenant_claim": ""}, env)
    load_settings({"data_dir": tmp_path, "oidc_tenant_claim": "", "oidc_default_tenant": "h"}, env)


def test_acr_values_are_a_comma_list(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": tmp_path},
        {
            "GATEWAY_OIDC_ISSUER": "https://idp.example.org",
            "GATEWAY_OIDC_AUDIENCE": "gw",
            "GATEWAY_OIDC_MFA_ACR": "urn:a, urn:b,,",
        },
    )
    config = OidcConfig.from_settings(settings)
    assert config is not None and config.mfa_acr == {"urn:a", "urn:b"}
    assert OidcConfig.from_settings(load_settings({"data_dir": tmp_path}, {})) is None
