"""Versioned, forward-only schema migrations on both catalogs: from an empty database,
from the previous version with its rows kept, refusal without GATEWAY_MIGRATE=auto and
of a newer schema, and `gateway migrate` [--check]."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from gateway.catalog.base import SchemaMismatch
from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.postgres_schema import SCHEMA_VERSION as PG_VERSION
from gateway.catalog.postgres_schema import migrate as pg_migrate
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.catalog.sqlite_schema import SCHEMA_VERSION as SQLITE_VERSION
from gateway.cli import main
from gateway.keys.base import WrappedKey
from tests.fakes import upload_row


def _pg_version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_from_an_empty_database_to_the_current_version(dsn: str) -> None:
    catalog = PostgresCatalog(dsn)
    try:
        assert catalog.schema_change == (0, PG_VERSION)
        assert catalog.key_checks() == []
    finally:
        catalog.close()
    again = PostgresCatalog(dsn)  # opening a current schema changes nothing
    try:
        assert again.schema_change == (PG_VERSION, PG_VERSION)
    finally:
        again.close()
    assert _pg_version(dsn) == PG_VERSION


def test_postgres_from_the_previous_version_keeps_every_row(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        assert pg_migrate(conn, target=PG_VERSION - 1) == (0, PG_VERSION - 1)
    # Rows written by the previous version's gateway: a migration keeps them.
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO uploads (id, owner, tenant, length, upload_offset, metadata, state, "
            "created_at, expires_at, segment_size, header, dek_id, parts) VALUES "
            "('old', 'alice', 't1', 10, 4, NULL, 'active', 1.0, NULL, 65536, %s, %s, '{}')",
            (b"header", b"dek-old"),
        )
        conn.execute(
            "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
            "VALUES (%s, 'old', 'local', 1, %s)",
            (b"dek-old", b"blob-old"),
        )
    with pytest.raises(SchemaMismatch, match="run `gateway migrate`"):
        PostgresCatalog(dsn, migrate=False)
    assert _pg_version(dsn) == PG_VERSION - 1  # refusing changed nothing
    catalog = PostgresCatalog(dsn)
    try:
        assert catalog.schema_change == (PG_VERSION - 1, PG_VERSION)
        old = catalog.get_upload("old")
        assert old is not None and old.offset == 4 and old.length == 10
        assert catalog.wrapped_key(b"dek-old") == WrappedKey("local", 1, b"blob-old")
        # What the new version adds works next to the old rows.
        assert catalog.add_key_check(b"check", WrappedKey("local", 1, b"wrapped"))
        assert catalog.key_checks() == [(b"check", WrappedKey("local", 1, b"wrapped"))]
        assert catalog.hook_outbox_depth() == (0, 0)
    finally:
        catalog.close()


def test_postgres_refuses_a_newer_schema(dsn: str) -> None:
    PostgresCatalog(dsn).close()
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaMismatch, match="version 99, newer"):
        PostgresCatalog(dsn)
    assert _pg_version(dsn) == 99


def test_sqlite_from_the_previous_version_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = SQLiteCatalog(path)
    catalog.create_upload(upload_row("old"), WrappedKey("local", 1, b"blob-old"))
    catalog.close()
    conn = sqlite3.connect(path)
    with conn:  # as the previous version left it: tokens from the counter alone
        conn.execute("DELETE FROM lease_tokens WHERE name = 'reserved'")
        conn.execute("UPDATE lease_tokens SET last_token = 41 WHERE name = 'fencing'")
        conn.execute("UPDATE schema_version SET version = ?", (SQLITE_VERSION - 1,))
    conn.close()
    with pytest.raises(SchemaMismatch, match="run `gateway migrate`"):
        SQLiteCatalog(path, migrate=False)
    catalog = SQLiteCatalog(path)
    try:
        assert catalog.schema_change == (SQLITE_VERSION - 1, SQLITE_VERSION)
        assert catalog.get_upload("old") is not None
        assert catalog.add_key_check(b"check", WrappedKey("local", 1, b"wrapped"))
        assert not catalog.add_key_check(b"other", WrappedKey("local", 1, b"second"))
        assert catalog.key_checks() == [(b"check", WrappedKey("local", 1, b"wrapped"))]
        assert catalog.hook_outbox_depth() == (0, 0)
        lease = catalog.acquire_lease("old", "w", 30.0, 0.0)
        assert lease is not None and lease.token == 42  # the counter goes on
    finally:
        catalog.close()


def test_sqlite_from_empty_without_migrate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaMismatch, match="version 0, this gateway needs"):
        SQLiteCatalog(tmp_path / "catalog.sqlite3", migrate=False)


def test_gateway_migrate_on_postgres(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_CATALOG", dsn)
    data_dir = str(tmp_path / "data")
    assert main(["migrate", "--check", "--data-dir", data_dir]) == 1
    assert "version 0, this gateway needs" in capsys.readouterr().err
    assert main(["migrate", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out == f"catalog schema: migrated from version 0 to {PG_VERSION}\n"
    assert main(["migrate", "--check", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out == f"catalog schema: version {PG_VERSION}, up to date\n"
    assert not (tmp_path / "data").exists()  # a PostgreSQL catalog needs no data dir


def test_gateway_migrate_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    assert main(["migrate", "--check", "--data-dir", str(data_dir)]) == 1
    assert "no catalog" in capsys.readouterr().err
    assert not data_dir.exists()  # --check creates nothing
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out == f"catalog schema: migrated from version 0 to {SQLITE_VERSION}\n"
    assert main(["migrate", "--check", "--data-dir", str(data_dir)]) == 0


def test_a_gateway_with_migrate_off_refuses_an_old_schema(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(dsn) as conn:
        pg_migrate(conn, target=PG_VERSION - 1)
    monkeypatch.setenv("GATEWAY_CATALOG", dsn)
    monkeypatch.setenv("GATEWAY_MIGRATE", "off")
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "run `gateway migrate`" in err
    assert _pg_version(dsn) == PG_VERSION - 1
