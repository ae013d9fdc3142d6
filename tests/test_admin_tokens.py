"""The admin API for a tenant's API keys and the key status (gateway/admin_tokens.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.auth import mint_token
from gateway.catalog.base import AuditQuery, Principal
from gateway.catalog.sqlite import SQLiteCatalog
from tests.inprocess import app_client, build_app
from tests.tushttp import assert_problem


@dataclass
class Api:
    client: httpx.Client
    data_dir: Path
    user: dict[str, str]  # no role: an uploader of tenant "default"
    admin: dict[str, str]  # admin of "default"
    elsewhere: dict[str, str]  # admin of "clinic-b"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    data_dir = tmp_path / "data"
    app, token = build_app(data_dir)
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        admin = mint_token(catalog, Principal("it", "default", frozenset({"admin"})))
        other = mint_token(catalog, Principal("it", "clinic-b", frozenset({"admin"})))
    finally:
        catalog.close()
    with app_client(app) as client:
        yield Api(client, data_dir, bearer(token), bearer(admin), bearer(other))


def audit_actions(data_dir: Path) -> list[dict[str, object]]:
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        rows = catalog.audit_records(AuditQuery(limit=1000))
    finally:
        catalog.close()
    return [json.loads(r.entry) for r in rows]


def test_only_admins_reach_it(api: Api) -> None:
    for method, path in (
        ("GET", "/admin/tokens"),
        ("POST", "/admin/tokens"),
        ("DELETE", "/admin/tokens/0123456789abcdef"),
        ("GET", "/admin/keys"),
    ):
        assert_problem(api.client.request(method, path), 401, "ERR_UNAUTHORIZED")
        refused = api.client.request(method, path, headers=api.user)
        assert_problem(refused, 403, "ERR_FORBIDDEN")


def test_an_admin_creates_lists_and_revokes_its_tenants_keys(api: Api) -> None:
    body = {"principal": "pacs-2", "roles": ["uploader"], "expires_in": 86400}
    made = api.client.post("/admin/tokens", headers=api.admin, json=body)
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["token"].startswith("gwt_") and made.headers["cache-control"] == "no-store"
    assert (key["principal"], key["tenant"], key["roles"]) == ("pacs-2", "default", "uploader")
    assert key["expires"] is not None and key["revoked"] is None
    created = api.client.post("/files/", headers={**bearer(key["token"]), "Upload-Length": "3"})
    assert created.status_code == 201, created.text  # the new key works at once

    listed = api.client.get("/admin/tokens", headers=api.admin).json()["keys"]
    mine = [k for k in listed if k["id"] == key["id"]]
    assert mine and "token" not in mine[0] and key["token"] not in json.dumps(listed)
    assert {k["tenant"] for k in listed} == {"default"}
    theirs = api.client.get("/admin/tokens", headers=api.elsewhere).json()["keys"]
    assert key["id"] not in {k["id"] for k in theirs}

    url = f"/admin/tokens/{key['id']}"
    assert_problem(api.client.delete(url, headers=api.elsewhere), 404, "ERR_TOKEN_NOT_FOUND")
    assert api.client.delete(url, headers=api.admin).status_code == 204
    refused = api.client.post("/files/", headers={**bearer(key["token"]), "Upload-Length": "3"})
    assert_problem(refused, 401, "ERR_TOKEN_REVOKED")
    assert_problem(api.client.delete(url + "0", headers=api.admin), 404, "ERR_TOKEN_NOT_FOUND")

    log = audit_actions(api.data_dir)
    made_entry = next(e for e in log if e["action"] == "token.created")
    assert made_entry["details"] == {
        "key_id": key["id"],
        "subject": "default/pacs-2",
        "roles": "uploader",
        "expires_at": key["expires"],
    }
    assert (made_entry["principal"], made_entry["tenant"]) == ("it", "default")
    revoked = next(e for e in log if e["action"] == "token.revoked")
    assert revoked["details"] == {"key_id": key["id"]}
    assert key["token"] not in json.dumps(log)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"principal": "x", "tenant": "other"},
        {"principal": ""},
        {"principal": " x"},
        {"principal": "x\n"},
        {"principal": "x", "roles": ["root"]},
        {"principal": "x", "roles": "admin"},
        {"principal": "x", "expires_in": 10},
        {"principal": "x", "expires_in": True},
        {"principal": "x", "expires_in": 1.5},
    ],
)
def test_bad_requests_are_refused_with_a_code(api: Api, body: object) -> None:
    refused = api.client.post("/admin/tokens", headers=api.admin, json=body)
    assert_problem(refused, 400, "ERR_INVALID_TOKEN_REQUEST")


def test_a_key_that_never_expires(api: Api) -> None:
    made = api.client.post("/admin/tokens", headers=api.admin, json={"principal": "script"})
    assert made.status_code == 201 and made.json()["expires"] is None
    assert made.json()["roles"] == ""  # no role: an uploader


def test_the_key_status(api: Api) -> None:
    status = api.client.get("/admin/keys", headers=api.admin)
    assert status.status_code == 200, status.text
    doc = status.json()
    assert doc["usable"] is True and doc["problem"] is None and doc["kek_id"]
    (signing,) = doc["signing_keys"]
    assert signing["current"] is True and signing["alg"] == "Ed25519"
    assert any("unprotected" in w or "KEK" in w for w in doc["warnings"])  # a plain keyring
    text = status.text
    assert "private" not in text and '"d"' not in text
