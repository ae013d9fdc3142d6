"""The admin API for legal holds (gateway/admin.py), over HTTP to an in-process app."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from gateway.admin import json_body
from gateway.auth import mint_token
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.errors import ERR, GatewayError
from tests.inprocess import app_client, build_app
from tests.tushttp import assert_problem, upload_id


@dataclass
class Admin:
    client: httpx.Client
    owner: dict[str, str]  # a client's token, without roles
    admin: dict[str, str]  # a token with the admin role, of the owner's tenant
    elsewhere: dict[str, str]  # an admin of another tenant

    def hold_url(self, uid: str) -> str:
        return f"/admin/holds/{uid}"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Admin]:
    app, token = build_app(tmp_path / "data")
    catalog = SQLiteCatalog(tmp_path / "data" / "catalog.sqlite3")
    try:
        admin = mint_token(catalog, Principal("root", "default", frozenset({"admin"})))
        elsewhere = mint_token(catalog, Principal("root", "ops", frozenset({"admin"})))
    finally:
        catalog.close()
    with app_client(app) as client:
        yield Admin(
            client,
            {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"},
            {"Authorization": f"Bearer {admin}"},
            {"Authorization": f"Bearer {elsewhere}"},
        )


def new_upload(api: Admin, data: bytes = b"hello") -> str:
    headers = {
        **api.owner,
        "Upload-Length": str(len(data)),
        "Content-Type": "application/offset+octet-stream",
    }
    response = api.client.post("/files/", headers=headers, content=data)
    assert response.status_code == 201, response.text
    return upload_id(response.headers["Location"])


def test_only_an_admin_token_may_hold(api: Admin) -> None:
    uid = new_upload(api)
    url = api.hold_url(uid)
    assert_problem(api.client.put(url, json={"case": "LIT-1"}), 401, "ERR_UNAUTHORIZED")
    assert_problem(api.client.get(url), 401, "ERR_UNAUTHORIZED")
    bad = {"Authorization": "Bearer gwt_nope"}
    assert_problem(api.client.put(url, headers=bad), 401, "ERR_UNAUTHORIZED")
    for method in ("GET", "PUT", "DELETE"):
        refused = api.client.request(method, url, headers=api.owner)
        assert_problem(refused, 403, "ERR_FORBIDDEN")
    response = api.client.put(url, headers=api.admin, json={"case": "LIT-2026-0042"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    held = response.json()
    assert held["upload_id"] == uid and held["held"] is True
    assert (held["case"], held["placed_by"]) == ("LIT-2026-0042", "default/root")
    assert held["placed_at"].endswith("Z")
    assert api.client.get(url, headers=api.admin).json() == held


def test_a_held_upload_refuses_delete_until_released(api: Admin) -> None:
    uid = new_upload(api)
    url = api.hold_url(uid)
    assert api.client.put(url, headers=api.admin).json()["case"] is None  # no body: no case
    refused = api.client.delete(f"/files/{uid}", headers=api.owner)
    assert_problem(refused, 409, "ERR_UPLOAD_ON_HOLD")
    assert api.client.head(f"/files/{uid}", headers=api.owner).status_code == 200
    released = api.client.delete(url, headers=api.admin)
    assert released.status_code == 200
    assert released.json() == {"upload_id": uid, "held": False}
    assert api.client.delete(url, headers=api.admin).json()["held"] is False  # idempotent
    deleted = api.client.delete(f"/files/{uid}", headers=api.owner)
    assert deleted.status_code == 204 and deleted.content == b""
    assert deleted.headers["Upload-Deletion-Receipt"].count(".") == 2
    # The upload is gone: the admin API does not know it any more.
    assert_problem(api.client.get(url, headers=api.admin), 404, "ERR_UPLOAD_NOT_FOUND")


def test_bad_requests_are_refused_with_a_code(api: Admin) -> None:
    uid = new_upload(api)
    url = api.hold_url(uid)
    for case in ("John Doe", "x" * 65, "", 12):
        refused = api.client.put(url, headers=api.admin, json={"case": case})
        assert_problem(refused, 400, "ERR_INVALID_CASE_REFERENCE")
    for body in (b"{", b'{"case": "A", "patient": "x"}', b"[1]", b"x" * 2000):
        refused = api.client.put(url, headers=api.admin, content=body)
        assert_problem(refused, 400, "ERR_MALFORMED_REQUEST")
    assert api.client.get(url, headers=api.admin).json()["held"] is False
    for unknown in ("A" * 22, "not an id!"):
        for method in ("GET", "PUT", "DELETE"):
            missing = api.client.request(method, api.hold_url(unknown), headers=api.admin)
            assert_problem(missing, 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(api.client.post(url, headers=api.admin), 405, "ERR_METHOD_NOT_ALLOWED")


def test_an_admin_holds_only_its_own_tenants_uploads(api: Admin) -> None:
    uid = new_upload(api)
    url = api.hold_url(uid)
    outside = api.elsewhere
    assert_problem(api.client.put(url, headers=outside, json={}), 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(api.client.get(url, headers=outside), 404, "ERR_UPLOAD_NOT_FOUND")
    assert api.client.put(url, headers=api.admin, json={"case": "LIT-9"}).status_code == 200
    assert_problem(api.client.delete(url, headers=outside), 404, "ERR_UPLOAD_NOT_FOUND")
    assert api.client.get(url, headers=api.admin).json()["held"] is True  # still held


def test_a_json_body_cut_off_midway_is_refused_with_a_code() -> None:
    """The client went before its body ended (admin holds, tokens, grants): a 400 with a
    code, not an unexpected error."""
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": b'{"case": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"100")]}
    request = Request(scope, receive)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(json_body(request))
    assert refused.value.err is ERR.MALFORMED_REQUEST
