"""Crypto-shredding end to end: after DELETE answers 204, the wrapped key's bytes are
nowhere in the catalog's files, even when another connection was reading it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import httpx

from tests.server import GatewayProcess
from tests.tushttp import catalog_files_holding, error_code, upload, upload_id


def _wrapped_key(data_dir: Path, uid: str) -> bytes:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        row = db.execute("SELECT blob FROM wrapped_keys WHERE upload_id = ?", (uid,)).fetchone()
    db.close()
    assert row is not None
    return bytes(row[0])


def test_delete_leaves_no_trace_of_the_key(gateway: GatewayProcess) -> None:
    url = upload(gateway, os.urandom(5000))
    secret = _wrapped_key(gateway.data_dir, upload_id(url))
    assert httpx.delete(url, headers=gateway.auth, timeout=30).status_code == 204
    assert catalog_files_holding(gateway.data_dir, secret) == []


def test_delete_while_the_catalog_is_being_read(gateway: GatewayProcess) -> None:
    url = upload(gateway, os.urandom(5000))
    secret = _wrapped_key(gateway.data_dir, upload_id(url))
    reader = sqlite3.connect(gateway.data_dir / "catalog.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM uploads").fetchall()
        response = httpx.delete(url, headers=gateway.auth, timeout=30)
        # Not a 204 while the key's bytes are still there: the reader may need them.
        assert response.status_code == 503, response.text
        assert error_code(response) == "ERR_KEY_SHRED_PENDING"
        assert int(response.headers["Retry-After"]) > 0
        assert catalog_files_holding(gateway.data_dir, secret) != []
        # Deleted all the same: the upload is gone for every request.
        assert httpx.head(url, headers=gateway.auth, timeout=30).status_code == 404
        assert httpx.get(url, headers=gateway.auth, timeout=30).status_code == 404
    finally:
        reader.close()
    assert httpx.delete(url, headers=gateway.auth, timeout=30).status_code == 204
    assert catalog_files_holding(gateway.data_dir, secret) == []
    assert httpx.delete(url, headers=gateway.auth, timeout=30).status_code == 404
