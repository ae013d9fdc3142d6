"""Grants (gateway/grants.py): the request's rules, and the SQLite catalog's grant table."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.catalog.base import Deletion, Grant, Principal, UploadState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.catalog.sqlite_schema import SCHEMA_VERSION
from gateway.errors import ERR, GatewayError
from gateway.grants import MAX_EXPIRES_IN, MIN_EXPIRES_IN, describe, parse_request
from gateway.keys.base import WrappedKey
from tests.fakes import upload_row

GRANTER = Principal("alice", "north")


def grant(gid: str, upload_id: str = "u1", *, expires_at: float = 2000.0) -> Grant:
    return Grant(
        id=gid,
        upload_id=upload_id,
        principal="carol",
        tenant="south",
        granted_by="north/alice",
        created_at=1000.0,
        expires_at=expires_at,
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    cat = SQLiteCatalog(tmp_path / "c.db")
    cat.create_upload(upload_row("u1"), WrappedKey("local", 1, b"k1"))
    cat.create_upload(upload_row("u2"), WrappedKey("local", 1, b"k2"))
    try:
        yield cat
    finally:
        cat.close()


def test_grants_go_with_their_upload(catalog: SQLiteCatalog, tmp_path: Path) -> None:
    catalog.add_grant(grant("g1"))
    catalog.add_grant(grant("g2", "u2"))
    deletion = Deletion("u1", 1.0, "client", {"principal": "alice"}, None, b"dek-u1", None, None)
    catalog.terminate("u1", deletion)
    assert catalog.grants("u1", now=0.0) == []
    assert not catalog.add_grant(grant("g3"))  # terminated: no new grant
    catalog.retire("u2")  # a finished partial a final still reads
    assert catalog.grants("u2", now=0.0) == []
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        conn.execute("INSERT INTO grants VALUES ('g5', 'u1', 'c', 't', 'x', 1.0, 9.0)")
        conn.commit()
    finally:
        conn.close()
    catalog.forget("u1")
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM grants").fetchone() == (0,)
    finally:
        conn.close()


def test_a_version_3_catalog_gains_the_grant_table(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cat = SQLiteCatalog(path)
    cat.create_upload(upload_row("u1", state=UploadState.COMPLETE), None)
    cat.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE grants")
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()
    upgraded = SQLiteCatalog(path)
    try:
        assert upgraded.add_grant(grant("g1"))
        assert upgraded.grants("u1", now=0.0) == [grant("g1")]
    finally:
        upgraded.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_a_request_names_a_principal_and_an_expiry() -> None:
    assert parse_request({"principal": "carol", "expires_in": 3600}, GRANTER) == (
        "carol",
        "north",
        3600,
    )
    body = {"principal": "dr.who@x", "tenant": "south", "expires_in": 60, "access": "read"}
    assert parse_request(body, GRANTER) == ("dr.who@x", "south", 60)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "carol",
        {"expires_in": 3600},
        {"principal": "carol"},
        {"principal": "", "expires_in": 3600},
        {"principal": " carol", "expires_in": 3600},
        {"principal": "ca\nrol", "expires_in": 3600},
        {"principal": "c" * 257, "expires_in": 3600},
        {"principal": 7, "expires_in": 3600},
        {"principal": "carol", "tenant": None, "expires_in": 3600},
        {"principal": "carol", "expires_in": "3600"},
        {"principal": "carol", "expires_in": 3600.0},
        {"principal": "carol", "expires_in": True},
        {"principal": "carol", "expires_in": MIN_EXPIRES_IN - 1},
        {"principal": "carol", "expires_in": MAX_EXPIRES_IN + 1},
        {"principal": "carol", "expires_in": 3600, "access": "write"},
        {"principal": "carol", "expires_in": 3600, "upload": "u1"},
    ],
)
def test_bad_requests_are_refused(body: object) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_request(body, GRANTER)
    assert caught.value.err == ERR.INVALID_GRANT


def test_describe() -> None:
    assert describe(grant("g1")) == {
        "id": "g1",
        "upload_id": "u1",
        "principal": "carol",
        "tenant": "south",
        "access": "read",
        "granted_by": "north/alice",
        "created_at": "1970-01-01T00:16:40.000000Z",
        "expires_at": "1970-01-01T00:33:20.000000Z",
    }
