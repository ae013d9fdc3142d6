"""OIDC sign-in end to end: a real `gateway serve` checks access tokens signed by keys of a
small OpenID provider on loopback (tests/oidc_server.py), discovered from its issuer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.oidc_server import AUDIENCE, OidcProvider, running_provider
from tests.server import GatewayProcess, free_port, mint_token
from tests.tushttp import assert_problem

REFRESH = 1.0  # GATEWAY_OIDC_JWKS_REFRESH: the shortest allowed, so tests wait little


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_provider() as p:
        yield p


@pytest.fixture(scope="module")
def gateway(
    provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(
        tmp_path_factory.mktemp("oidc") / "data",
        env={
            "GATEWAY_OIDC_ISSUER": provider.issuer,
            "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
            "GATEWAY_OIDC_JWKS_REFRESH": str(REFRESH),
            "GATEWAY_OIDC_LEEWAY": "30",
            "GATEWAY_AUTH_FAILURE_BURST": "1000",  # tests/test_bruteforce.py covers the limit
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def create(gateway: GatewayProcess, token: str) -> httpx.Response:
    return httpx.post(
        gateway.files_url,
        headers={
            "Authorization": f"Bearer {token}",
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "5",
        },
    )


def refused(gateway: GatewayProcess, token: str, code: str = "ERR_UNAUTHORIZED") -> None:
    response = create(gateway, token)
    assert_problem(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_valid_token_signs_in_its_subject_in_its_tenant(
    gateway: GatewayProcess, provider: OidcProvider, alg: str
) -> None:
    kid = provider.add_key(alg)
    time.sleep(REFRESH)  # a new key: the next unknown kid may refetch the JWKS
    response = create(gateway, provider.token(kid, sub=f"user-{alg}", tenant="north"))
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    # The upload is owned by (sub, tenant claim): an API key of that principal sees it,
    # one of another tenant does not.
    same = mint_token(gateway.data_dir, f"user-{alg}", "north")
    other = mint_token(gateway.data_dir, f"user-{alg}", "south")
    head = {"Tus-Resumable": "1.0.0"}
    assert (
        httpx.head(location, headers={**head, "Authorization": f"Bearer {same}"}).status_code == 200
    )
    assert (
        httpx.head(location, headers={**head, "Authorization": f"Bearer {other}"}).status_code
        == 404
    )


@pytest.fixture(scope="module")
def kid(gateway: GatewayProcess, provider: OidcProvider) -> str:
    kid = provider.add_key("RS256")
    time.sleep(REFRESH)
    assert create(gateway, provider.token(kid)).status_code == 201
    return kid


def test_an_expired_token_is_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    now = int(time.time())
    refused(
        gateway,
        provider.token(kid, iat=now - 600, nbf=now - 600, exp=now - 120),
        "ERR_TOKEN_EXPIRED",
    )
    # Within the leeway (30 s) it still passes: clocks are never quite in step.
    assert create(gateway, provider.token(kid, exp=now - 5)).status_code == 201


def test_a_token_not_yet_valid_is_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    now = int(time.time())
    refused(gateway, provider.token(kid, nbf=now + 600))
    refused(gateway, provider.token(kid, iat=now + 600))


def test_a_token_for_another_audience_is_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    refused(gateway, provider.token(kid, aud="another-service"))
    refused(gateway, provider.token(kid, aud=None))
    assert (
        create(gateway, provider.token(kid, aud=["another-service", AUDIENCE])).status_code == 201
    )


def test_a_token_from_another_issuer_is_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    refused(gateway, provider.token(kid, iss="https://idp.example.org"))
    refused(gateway, provider.token(kid, iss=None))


def test_alg_none_is_refused(gateway: GatewayProcess, provider: OidcProvider, kid: str) -> None:
    refused(gateway, provider.unsigned(kid))


def test_hmac_keyed_with_the_public_key_is_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    refused(gateway, provider.hs256_with_public_key(kid))


def test_a_bad_signature_and_missing_claims_are_refused(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    header, _, signature = provider.token(kid).split(".")
    other = provider.token(kid, sub="mallory").split(".")[1]
    refused(gateway, f"{header}.{other}.{signature}")
    refused(gateway, provider.token(kid, exp=None))
    refused(gateway, provider.token(kid, sub=None))
    refused(gateway, provider.token(kid, tenant=None))


def test_unknown_kids_refetch_the_jwks_once_then_rotation_works(
    gateway: GatewayProcess, provider: OidcProvider, kid: str
) -> None:
    time.sleep(REFRESH)
    before = provider.jwks_fetches
    # Many tokens signed by a key the provider has not published: one refetch, then
    # at most one per interval (GATEWAY_OIDC_JWKS_REFRESH), however many requests.
    hidden = provider.add_key("ES256", publish=False)
    started = time.monotonic()
    with httpx.Client() as client:
        for _ in range(50):
            response = client.post(
                gateway.files_url,
                headers={
                    "Authorization": f"Bearer {provider.token(hidden)}",
                    "Tus-Resumable": "1.0.0",
                    "Upload-Length": "5",
                },
            )
            assert_problem(response, 401, "ERR_UNAUTHORIZED")
    elapsed = time.monotonic() - started
    fetched = provider.jwks_fetches - before
    assert 1 <= fetched <= 1 + elapsed // REFRESH, (fetched, elapsed)
    # The provider rotates: it publishes the new key. Once the interval has passed, the
    # first token naming it refetches the JWKS and signs in.
    provider.publish(hidden)
    time.sleep(REFRESH)
    before = provider.jwks_fetches
    assert create(gateway, provider.token(hidden)).status_code == 201
    assert provider.jwks_fetches - before == 1
    assert create(gateway, provider.token(kid)).status_code == 201  # the old key still works
    assert create(gateway, provider.token(hidden)).status_code == 201
    assert provider.jwks_fetches - before == 1
    assert provider.discovery_fetches == 1  # the JWKS URL came from discovery, once


def test_api_keys_still_work_beside_oidc(gateway: GatewayProcess) -> None:
    assert create(gateway, gateway.token).status_code == 201


def test_a_plain_http_issuer_elsewhere_stops_the_gateway_at_start(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(tmp_path / "d")],
        env={
            **os.environ,
            "GATEWAY_OIDC_ISSUER": "http://idp.example.org",
            "GATEWAY_OIDC_AUDIENCE": "a",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "GATEWAY_OIDC_ISSUER" in out.stderr and "https" in out.stderr


def test_a_provider_out_of_reach_is_503_not_401(
    provider: OidcProvider, kid: str, tmp_path: Path
) -> None:
    # The JWKS URL is given (so discovery is not used) but nothing listens there.
    discoveries = provider.discovery_fetches
    proc = GatewayProcess(
        tmp_path / "data",
        env={
            "GATEWAY_OIDC_ISSUER": provider.issuer,
            "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
            "GATEWAY_OIDC_JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks",
            "GATEWAY_OIDC_TIMEOUT": "2",
        },
    ).start()
    try:
        response = create(proc, provider.token(kid))
        assert_problem(response, 503, "ERR_IDENTITY_PROVIDER_UNAVAILABLE")
        assert response.headers["Retry-After"]
        assert create(proc, proc.token).status_code == 201  # API keys do not need it
    finally:
        proc.stop()
    assert provider.discovery_fetches == discoveries


def test_the_mfa_policy_with_signed_in_users(provider: OidcProvider, tmp_path: Path) -> None:
    """GATEWAY_REQUIRE_MFA_FOR=download,grant: a sign-in whose amr shows a second factor
    may, one with a password alone (or an API key) gets 403 ERR_MFA_REQUIRED; a
    consultant of another tenant with the reader role reads through a grant."""
    kid = provider.add_key("ES256")
    proc = GatewayProcess(
        tmp_path / "data",
        env={
            "GATEWAY_OIDC_ISSUER": provider.issuer,
            "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
            "GATEWAY_OIDC_JWKS_REFRESH": str(REFRESH),
            "GATEWAY_REQUIRE_MFA_FOR": "download,grant",
        },
    ).start()
    try:
        strong = provider.token(kid, sub="dr-a", tenant="north", amr=["pwd", "otp"])
        weak = provider.token(kid, sub="dr-a", tenant="north", amr=["pwd"])
        data = b"study"
        created = httpx.post(
            proc.files_url,
            headers={
                "Authorization": f"Bearer {weak}",  # creating needs no second factor here
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(data)),
                "Content-Type": "application/offset+octet-stream",
            },
            content=data,
        )
        assert created.status_code == 201, created.text
        url = created.headers["Location"]

        def get(token: str) -> httpx.Response:
            return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        assert get(strong).content == data
        assert_problem(get(weak), 403, "ERR_MFA_REQUIRED")
        api_key = mint_token(proc.data_dir, "dr-a", "north")
        assert_problem(get(api_key), 403, "ERR_MFA_REQUIRED")

        grants_url = f"{url}/grants"
        body = {"principal": "consultant", "tenant": "south", "expires_in": 3600}
        weak_grant = httpx.post(
            grants_url, headers={"Authorization": f"Bearer {weak}"}, json=body, timeout=30
        )
        assert_problem(weak_grant, 403, "ERR_MFA_REQUIRED")
        granted = httpx.post(
            grants_url, headers={"Authorization": f"Bearer {strong}"}, json=body, timeout=30
        )
        assert granted.status_code == 201, granted.text
        consultant = provider.token(
            kid, sub="consultant", tenant="south", roles=["reader"], amr=["mfa"]
        )
        assert get(consultant).content == data
        no_factor = provider.token(kid, sub="consultant", tenant="south", roles=["reader"])
        assert_problem(get(no_factor), 403, "ERR_MFA_REQUIRED")
        stranger = provider.token(kid, sub="someone", tenant="south", roles=["reader"], amr=["mfa"])
        assert_problem(get(stranger), 404, "ERR_UPLOAD_NOT_FOUND")
    finally:
        proc.stop()
