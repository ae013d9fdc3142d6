"""Shared keys: a gateway whose keys do not unwrap the catalog's key checks refuses to
start (gateway/keycheck.py), on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.catalog.base import Catalog
from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.cli import main
from gateway.keycheck import check_shared_keys
from gateway.keys.base import KeyUnusable
from gateway.keys.keyring import LocalKeyring
from tests.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        opened: Catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
        yield opened
        opened.close()
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    database = postgres.create_database()
    opened = PostgresCatalog(postgres.dsn(database))
    yield opened
    opened.close()
    postgres.drop_database(database)


def _keyring(path: Path) -> LocalKeyring:
    ring = LocalKeyring.open(path)
    ring.init()
    return ring


def test_the_same_keys_pass_and_each_kek_version_gets_one_check(
    catalog: Catalog, tmp_path: Path
) -> None:
    ring = _keyring(tmp_path / "keyring.json")
    check_shared_keys(catalog, ring)
    check_shared_keys(catalog, LocalKeyring.open(tmp_path / "keyring.json"))
    assert [w.kek_version for _, w in catalog.key_checks()] == [1]
    ring.rotate()
    check_shared_keys(catalog, ring)
    assert sorted(w.kek_version for _, w in catalog.key_checks()) == [1, 2]


def test_other_keys_are_refused(catalog: Catalog, tmp_path: Path) -> None:
    check_shared_keys(catalog, _keyring(tmp_path / "a" / "keyring.json"))
    other = _keyring(tmp_path / "b" / "keyring.json")
    with pytest.raises(KeyUnusable, match="same key provider"):
        check_shared_keys(catalog, other)
    assert len(catalog.key_checks()) == 1  # the refused gateway added nothing


def test_a_gateway_with_another_keyring_refuses_to_start(
    postgres: PostgresServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = postgres.create_database()
    monkeypatch.setenv("GATEWAY_CATALOG", postgres.dsn(database))
    catalog = PostgresCatalog(postgres.dsn(database))
    try:
        check_shared_keys(catalog, _keyring(tmp_path / "a" / "keyring.json"))
    finally:
        catalog.close()
    other = tmp_path / "b" / "keyring.json"
    monkeypatch.setenv("GATEWAY_KEYRING_PATH", str(other))
    _keyring(other)
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "1"]) == 2
    assert "every gateway sharing a catalog must use the same key provider" in (
        capsys.readouterr().err
    )
    postgres.drop_database(database)
