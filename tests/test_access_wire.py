"""Tenants, roles, grants and the MFA policy end to end: a real `gateway serve` process,
tokens minted by `gateway token --role`, requests over a socket."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import GatewayProcess
from tests.tushttp import OCTET, assert_problem, upload_id

DATA = bytes(range(256)) * 64


def token(data_dir: Path, principal: str, tenant: str, *roles: str) -> str:
    role_args = [arg for role in roles for arg in ("--role", role)]
    command = ["token", "--data-dir", str(data_dir), "--principal", principal]
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *command, "--tenant", tenant, *role_args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("access") / "data"
    tokens = {
        "alice": token(data_dir, "alice", "north"),
        "eve": token(data_dir, "eve", "south", "uploader"),
        "carol": token(data_dir, "carol", "south", "reader"),
        "audrey": token(data_dir, "audrey", "north", "auditor"),
        "root": token(data_dir, "root", "north", "admin"),
    }
    gateway = GatewayProcess(
        data_dir, env={"GATEWAY_REQUIRE_MFA_FOR": "delete,admin"}, token=tokens["alice"]
    ).start()
    try:
        yield gateway, tokens
    finally:
        gateway.stop()


def h(tokens: dict[str, str], who: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}", "Tus-Resumable": "1.0.0", **extra}


def test_cross_tenant_grant_expiry_and_revocation_over_http(
    server: tuple[GatewayProcess, dict[str, str]],
) -> None:
    gateway, tokens = server
    files = gateway.files_url
    with httpx.Client(timeout=30) as client:
        created = client.post(
            files,
            headers=h(tokens, "alice", **{"Upload-Length": str(len(DATA)), "Content-Type": OCTET}),
            content=DATA,
        )
        assert created.status_code == 201, created.text
        uid = upload_id(created.headers["Location"])
        url = files + uid
        # Another tenant, and a reader without a grant: nothing there.
        for who in ("eve", "carol"):
            for path in (url, url + "/manifest"):
                refused = client.get(path, headers=h(tokens, who))
                assert_problem(refused, 404, "ERR_UPLOAD_NOT_FOUND")
        assert_problem(
            client.get(url + "/grants", headers=h(tokens, "eve")), 404, "ERR_UPLOAD_NOT_FOUND"
        )
        assert client.head(url, headers=h(tokens, "eve")).status_code == 404
        # A week's grant to the consultant of the other tenant.
        body = {"principal": "carol", "tenant": "south", "expires_in": 7 * 86400}
        granted = client.post(url + "/grants", headers=h(tokens, "alice"), json=body)
        assert granted.status_code == 201, granted.text
        gid = granted.json()["id"]
        assert client.get(url, headers=h(tokens, "carol")).content == DATA
        ranged = client.get(url, headers=h(tokens, "carol", Range="bytes=100-"))
        assert ranged.status_code == 206 and ranged.content == DATA[100:]
        manifest = client.get(url + "/manifest", headers=h(tokens, "carol"))
        assert (
            manifest.status_code == 200 and manifest.headers["content-type"] == "application/jose"
        )
        patch = h(tokens, "carol", **{"Upload-Offset": "0", "Content-Type": OCTET})
        assert_problem(client.patch(url, headers=patch, content=b"x"), 403, "ERR_FORBIDDEN")
        assert_problem(client.delete(url, headers=h(tokens, "carol")), 403, "ERR_FORBIDDEN")
        # Expired (in the catalog, as time would): refused on the next request.
        catalog = sqlite3.connect(gateway.data_dir / "catalog.sqlite3")
        with catalog:
            catalog.execute("UPDATE grants SET expires_at = 0 WHERE id = ?", (gid,))
        catalog.close()
        assert_problem(client.get(url, headers=h(tokens, "carol")), 404, "ERR_UPLOAD_NOT_FOUND")
        # Granted again, then revoked: refused on the next request.
        again = client.post(url + "/grants", headers=h(tokens, "alice"), json=body).json()["id"]
        assert client.get(url + "/manifest", headers=h(tokens, "carol")).status_code == 200
        revoked = client.delete(f"{url}/grants/{again}", headers=h(tokens, "alice"))
        assert revoked.status_code == 204
        assert_problem(
            client.get(url + "/manifest", headers=h(tokens, "carol")), 404, "ERR_UPLOAD_NOT_FOUND"
        )
        # The auditor of the tenant: the manifest, never the data.
        assert client.get(url + "/manifest", headers=h(tokens, "audrey")).status_code == 200
        assert_problem(client.get(url, headers=h(tokens, "audrey")), 403, "ERR_FORBIDDEN")
        # The MFA policy (delete, admin): an API key shows no second factor.
        assert_problem(client.delete(url, headers=h(tokens, "alice")), 403, "ERR_MFA_REQUIRED")
        hold = f"{gateway.url}/admin/holds/{uid}"
        assert_problem(client.get(hold, headers=h(tokens, "root")), 403, "ERR_MFA_REQUIRED")
        assert_problem(client.get(hold, headers=h(tokens, "alice")), 403, "ERR_FORBIDDEN")
        assert client.head(url, headers=h(tokens, "alice")).status_code == 200


def test_a_revocation_holds_at_once_in_every_gateway_process(
    server: tuple[GatewayProcess, dict[str, str]],
) -> None:
    first, tokens = server
    second = GatewayProcess(first.data_dir, env=dict(first.env), token=tokens["alice"])
    second.env["GATEWAY_PUBLIC_URL"] = second.url
    second.start()
    try:
        with httpx.Client(timeout=30) as client:
            headers = h(tokens, "alice", **{"Upload-Length": "5", "Content-Type": OCTET})
            created = client.post(first.files_url, headers=headers, content=b"hello")
            uid = upload_id(created.headers["Location"])
            body = {"principal": "carol", "tenant": "south", "expires_in": 3600}
            granted = client.post(
                f"{first.files_url}{uid}/grants", headers=h(tokens, "alice"), json=body
            )
            gid = granted.json()["id"]
            for gateway in (first, second):  # both read it: a cache would keep it now
                got = client.get(gateway.files_url + uid, headers=h(tokens, "carol"))
                assert got.content == b"hello"
            revoked = client.delete(
                f"{second.files_url}{uid}/grants/{gid}", headers=h(tokens, "alice")
            )
            assert revoked.status_code == 204
            for gateway in (first, second):
                refused = client.get(gateway.files_url + uid, headers=h(tokens, "carol"))
                assert_problem(refused, 404, "ERR_UPLOAD_NOT_FOUND")
    finally:
        second.stop()
