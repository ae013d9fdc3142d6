"""Brute-force limiting (gateway/bruteforce.py): failed authentications per client address
and per API key prefix, 429 with Retry-After, the metric, and the hook for the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.auth import Authenticator, mint_token
from gateway.bruteforce import AuthFailure, BruteForceGuard, FailureLimit, address_key
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.errors import GatewayError
from gateway.runner import Runner
from tests.server import GatewayProcess
from tests.server import mint_token as mint_cli_token
from tests.tushttp import assert_problem


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_may_fail_burst_times_then_regains_at_the_rate() -> None:
    clock = Clock()
    limit = FailureLimit(3, 6.0, clock=clock)  # 6 a minute: one every 10 s
    for _ in range(3):
        assert limit.retry_after("k") == 0
        limit.failed("k")
    assert limit.retry_after("k") == 10
    assert limit.retry_after("other") == 0
    clock.now += 4
    assert limit.retry_after("k") == 6
    clock.now += 6
    assert limit.retry_after("k") == 0
    limit.failed("k")
    assert limit.retry_after("k") == 10


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    limit = FailureLimit(1, 0.0)
    for _ in range(100):
        limit.failed("k")
    assert limit.retry_after("k") == 0


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("", ""),
        ("unix-socket", "unix-socket"),
    ],
)
def test_addresses_count_by_host_and_ipv6_by_its_64(client: str, key: str) -> None:
    assert address_key(client) == key


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    cat = SQLiteCatalog(tmp_path / "c.db")
    yield cat
    cat.close()


async def test_failures_reach_the_hook_without_the_credential(catalog: SQLiteCatalog) -> None:
    seen: list[AuthFailure] = []
    guard = BruteForceGuard(FailureLimit(2, 1.0), FailureLimit(2, 1.0))
    runner = Runner(2)
    auth = Authenticator(catalog, runner, guard=guard, on_failure=seen.append)
    good = mint_token(catalog, Principal("p", "t"))
    bad = "gwt_AAAAAAAAnot-a-real-token"
    try:
        for _ in range(2):
            with pytest.raises(GatewayError) as exc:
                await auth.principal([f"Bearer {bad}"], client="192.0.2.1")
            assert exc.value.code == "ERR_UNAUTHORIZED"
        with pytest.raises(GatewayError) as exc:
            await auth.principal([f"Bearer {good}"], client="192.0.2.1")
        assert exc.value.code == "ERR_AUTH_THROTTLED" and exc.value.status == 429
        assert int(exc.value.headers["Retry-After"]) >= 1
        assert (await auth.principal([f"Bearer {good}"], client="192.0.2.2")).id == "p"
        # A missing or malformed header is not a guess: not counted.
        with pytest.raises(GatewayError):
            await auth.principal([], client="192.0.2.3")
    finally:
        runner.close()
    assert seen == [
        AuthFailure("192.0.2.1", "api-key", "unknown"),
        AuthFailure("192.0.2.1", "api-key", "unknown"),
        AuthFailure("192.0.2.1", "api-key", "throttled", throttled=True),
        AuthFailure("192.0.2.3", "none", "no-credential"),
    ]
    assert all(bad not in repr(f) and good not in repr(f) for f in seen)


# -- over HTTP: the client address comes from X-Forwarded-For of a trusted proxy ----------

METRICS_TOKEN = "metrics-brute-force-test-token-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(
        tmp_path_factory.mktemp("bruteforce") / "data",
        env={
            "GATEWAY_AUTH_FAILURE_BURST": "3",
            "GATEWAY_AUTH_FAILURE_RATE": "1",  # one a minute: nothing regained during the test
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
            "GATEWAY_METRICS_TOKEN": METRICS_TOKEN,
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def attempt(gateway: GatewayProcess, token: str, client: str) -> httpx.Response:
    return httpx.post(
        gateway.files_url,
        headers={
            "Authorization": f"Bearer {token}",
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "5",
            "X-Forwarded-For": client,
        },
    )


def throttled(gateway: GatewayProcess, limit: str) -> float:
    body = httpx.get(
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ).text
    line = f'gateway_auth_throttled_total{{limit="{limit}"}} '
    values = [float(x.removeprefix(line)) for x in body.splitlines() if x.startswith(line)]
    return values[0] if values else 0.0


def test_an_address_that_keeps_failing_is_refused_429(gateway: GatewayProcess) -> None:
    before = throttled(gateway, "address")
    for i in range(3):
        assert_problem(
            attempt(gateway, f"gwt_guess{i:04d}xxxx", "198.51.100.1"), 401, "ERR_UNAUTHORIZED"
        )
    # Even the right token is refused now from that address: guessing gains nothing.
    response = attempt(gateway, gateway.token, "198.51.100.1")
    assert_problem(response, 429, "ERR_AUTH_THROTTLED")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert attempt(gateway, gateway.token, "198.51.100.2").status_code == 201
    assert throttled(gateway, "address") == before + 1


def test_a_key_prefix_that_keeps_failing_is_refused_429_from_any_address(
    gateway: GatewayProcess,
) -> None:
    victim = mint_cli_token(gateway.data_dir, "victim")
    prefix = victim[:12]
    for i in range(3):
        guess = f"{prefix}guess-{i}"
        assert_problem(attempt(gateway, guess, f"203.0.113.{i}"), 401, "ERR_UNAUTHORIZED")
    # The real key shares the prefix: refused too, from a fresh address, until it cools.
    response = attempt(gateway, victim, "203.0.113.50")
    assert_problem(response, 429, "ERR_AUTH_THROTTLED")
    assert throttled(gateway, "prefix") >= 1
    assert attempt(gateway, f"gwt_other{'x' * 20}", "203.0.113.51").status_code == 401
