"""API keys: the catalog's token rows (schema 4 and the upgrade from 3), `gateway token
create|list|revoke`, and revocation and expiry on the next request of a running gateway."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.auth import Authenticator, mint_api_key, token_hash
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.catalog.sqlite_schema import SCHEMA_VERSION
from gateway.errors import GatewayError
from gateway.runner import Runner
from tests.server import GatewayProcess
from tests.tushttp import assert_problem

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    catalog = SQLiteCatalog(tmp_path / "c.db")
    yield catalog
    catalog.close()


# -- the catalog ---------------------------------------------------------------------


def test_a_key_has_an_id_an_expiry_and_no_use_yet(cat: SQLiteCatalog) -> None:
    alice = Principal("alice", "north", frozenset({"reader"}))
    token_id = cat.add_token(b"h" * 32, alice, 10.0, token_id="k1", expires_at=100.0)
    assert token_id == "k1"
    key = cat.api_key(b"h" * 32)
    assert key is not None
    assert (key.id, key.principal, key.created_at, key.expires_at) == ("k1", alice, 10.0, 100.0)
    assert key.revoked_at is None and key.last_used_at is None
    assert key.usable(99.0) and not key.usable(100.0)
    assert cat.add_token(b"g" * 32, alice, 11.0) != ""  # a random id when none is given


def test_revoking_a_key_is_at_once_and_once(cat: SQLiteCatalog) -> None:
    cat.add_token(b"h" * 32, Principal("p", "t"), 1.0, token_id="k1")
    assert cat.principal_for(b"h" * 32) == Principal("p", "t")
    assert cat.revoke_token("k1", 5.0)
    assert not cat.revoke_token("k1", 6.0)
    assert not cat.revoke_token("nope", 6.0)
    key = cat.api_key(b"h" * 32)
    assert key is not None and key.revoked_at == 5.0 and not key.usable(5.0)
    assert cat.principal_for(b"h" * 32) is None


def test_last_use_is_written_at_most_once_a_minute(cat: SQLiteCatalog) -> None:
    cat.add_token(b"h" * 32, Principal("p", "t"), 1.0, token_id="k1")
    cat.token_used("k1", 100.0)
    cat.token_used("k1", 130.0)  # too soon: kept at 100
    key = cat.api_key(b"h" * 32)
    assert key is not None and key.last_used_at == 100.0
    cat.token_used("k1", 160.0)
    key = cat.api_key(b"h" * 32)
    assert key is not None and key.last_used_at == 160.0


def test_listing_shows_every_key_oldest_first(cat: SQLiteCatalog) -> None:
    cat.add_token(b"b" * 32, Principal("b", "t"), 2.0, token_id="kb")
    cat.add_token(b"a" * 32, Principal("a", "t"), 1.0, token_id="ka")
    assert [k.id for k in cat.api_keys()] == ["ka", "kb"]


def test_a_version_3_catalog_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path)
    conn.executescript((VECTORS / "catalog_v3.sql").read_text())
    conn.close()
    cat = SQLiteCatalog(path)
    try:
        keys = cat.api_keys()
        assert [(k.principal, k.created_at) for k in keys] == [
            (Principal("pacs", "north", frozenset({"admin"})), 1000.0),
            (Principal("script", "south"), 2000.0),
        ]
        assert all(len(k.id) == 16 for k in keys) and keys[0].id != keys[1].id
        assert all(k.expires_at is k.revoked_at is k.last_used_at is None for k in keys)
        assert cat.principal_for(b"\x33" * 32) == keys[0].principal
        assert cat.revoke_token(keys[0].id, 3000.0)
        assert cat.principal_for(b"\x33" * 32) is None
        ids = [k.id for k in keys]
    finally:
        cat.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()
    again = SQLiteCatalog(path)  # opening it again changes nothing
    try:
        assert [k.id for k in again.api_keys()] == ids
    finally:
        again.close()


# -- the Authenticator ----------------------------------------------------------------


async def test_each_request_looks_the_key_up_no_cache(cat: SQLiteCatalog) -> None:
    runner = Runner(2)
    now = [1000.0]
    auth = Authenticator(cat, runner, clock=lambda: now[0])
    try:
        token_id, token = mint_api_key(cat, Principal("p", "t"), expires_at=2000.0, now=now[0])
        header = [f"Bearer {token}"]
        assert (await auth.principal(header)).id == "p"
        key = cat.api_key(token_hash(token))
        assert key is not None and key.last_used_at == 1000.0
        now[0] = 1030.0
        await auth.principal(header)
        key = cat.api_key(token_hash(token))
        assert key is not None and key.last_used_at == 1000.0  # not written again so soon
        now[0] = 2000.0
        with pytest.raises(GatewayError) as exc:
            await auth.principal(header)
        assert exc.value.code == "ERR_TOKEN_EXPIRED"
        now[0] = 1500.0
        assert cat.revoke_token(token_id, now[0])
        with pytest.raises(GatewayError) as exc:
            await auth.principal(header)
        assert exc.value.code == "ERR_TOKEN_REVOKED"
    finally:
        runner.close()


# -- the command and a running gateway ----------------------------------------------------


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def create(
    gateway: GatewayProcess, token: str, client: httpx.Client | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", "Upload-Length": "5"}
    if client is None:
        return httpx.post(gateway.files_url, headers=headers)
    return client.post(gateway.files_url, headers=headers)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two worker processes: what one revokes, every one refuses on the next request."""
    proc = GatewayProcess(
        tmp_path_factory.mktemp("tokens") / "data", env={"GATEWAY_WORKERS": "2"}
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _created(data_dir: Path, *options: str) -> tuple[str, str]:
    out = gateway_cli("token", "create", "--data-dir", str(data_dir), *options)
    assert out.returncode == 0, out.stderr
    comment, token = out.stdout.strip().splitlines()
    token_id = comment.split()[3]
    return token_id, token


def test_a_revoked_key_is_refused_on_the_next_request_by_every_worker(
    workers: GatewayProcess,
) -> None:
    token_id, token = _created(
        workers.data_dir, "--principal", "pacs", "--tenant", "north", "--role", "uploader"
    )
    with httpx.Client() as client:
        for _ in range(6):
            assert create(workers, token, client).status_code == 201
    out = gateway_cli("token", "revoke", "--data-dir", str(workers.data_dir), token_id)
    assert out.returncode == 0 and token_id in out.stdout
    for _ in range(8):  # new connections, spread over both workers
        assert_problem(create(workers, token), 401, "ERR_TOKEN_REVOKED")
    again = gateway_cli("token", "revoke", "--data-dir", str(workers.data_dir), token_id)
    assert again.returncode == 1


def test_an_expired_key_is_refused(workers: GatewayProcess) -> None:
    _, token = _created(workers.data_dir, "--principal", "script", "--expires", "2s")
    assert create(workers, token).status_code == 201
    time.sleep(2.1)
    assert_problem(create(workers, token), 401, "ERR_TOKEN_EXPIRED")


def test_the_list_shows_keys_and_last_use_but_never_a_token_or_its_hash(
    workers: GatewayProcess,
) -> None:
    token_id, token = _created(
        workers.data_dir, "--principal", "modality-7", "--tenant", "south", "--expires", "90d"
    )
    assert create(workers, token).status_code == 201
    listing = gateway_cli("token", "list", "--data-dir", str(workers.data_dir), "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["id"]: row for row in map(json.loads, listing.stdout.splitlines())}
    row = rows[token_id]
    assert (row["principal"], row["tenant"], row["roles"]) == ("modality-7", "south", "")
    assert row["last_used"] is not None and row["revoked"] is None
    assert row["expires"] is not None and row["expires"][:4] >= row["created"][:4]
    table = gateway_cli("token", "list", "--data-dir", str(workers.data_dir))
    assert token_id in table.stdout and "modality-7" in table.stdout
    for text in (listing.stdout, table.stdout):
        assert token not in text and token[4:12] not in text
        assert token_hash(token).hex()[:16] not in text


def test_the_old_form_creates_a_key(tmp_path: Path) -> None:
    out = gateway_cli("token", "--data-dir", str(tmp_path / "d"), "--principal", "ops")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("gwt_")


@pytest.mark.parametrize("expires", ["0d", "5y", "90", "-1d", "4000d"])
def test_a_bad_lifetime_is_refused(tmp_path: Path, expires: str) -> None:
    out = gateway_cli("token", "create", "--data-dir", str(tmp_path / "d"), "--expires", expires)
    assert out.returncode == 2 and "--expires" in out.stderr
