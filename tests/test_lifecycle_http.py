"""Legal holds, deletion receipts, retention and expiry against a real `gateway serve`.

Retention counts days, and a test cannot wait for them: the test moves an upload's
completion time back in the catalog (`completed_at`, as if it had completed two days
ago) while the gateway runs, then watches the reaper's next pass. Everything else is
what a client and an operator do: tus requests, the admin API, the `gateway` command.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway import jws, receipts
from tests.server import GatewayProcess
from tests.tushttp import assert_problem, create, patch, upload, upload_id

DAY = 86400
REAP_INTERVAL = "0.3"


def gateway_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True, timeout=60
    )


def admin_token(data_dir: Path) -> dict[str, str]:
    out = gateway_cli("token", "--data-dir", str(data_dir), "--principal", "ops", "--role", "admin")
    assert out.returncode == 0, out.stderr
    return {"Authorization": f"Bearer {out.stdout.strip().splitlines()[-1]}"}


def published_keys(server: GatewayProcess) -> dict[str, jws.PublicSigningKey]:
    response = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10)
    assert response.status_code == 200
    return jws.keys_from_jwks(response.json())


def stored_receipt(server: GatewayProcess, uid: str) -> str:
    out = gateway_cli("receipt", uid, "--data-dir", str(server.data_dir))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the reaper did not get there in time"
        time.sleep(0.1)


def gone(server: GatewayProcess, url: str) -> bool:
    return httpx.head(url, headers=server.auth, timeout=10).status_code == 404


def test_a_hold_blocks_delete_and_a_receipt_verifies(gateway: GatewayProcess) -> None:
    url = upload(gateway, os.urandom(70_000))
    uid = upload_id(url)
    admin = admin_token(gateway.data_dir)
    hold_url = f"{gateway.url}/admin/holds/{uid}"
    response = httpx.put(hold_url, headers=admin, json={"case": "LIT-2026-0042"}, timeout=10)
    assert response.status_code == 200 and response.json()["held"] is True
    assert_problem(httpx.put(hold_url, headers=gateway.auth, timeout=10), 403, "ERR_FORBIDDEN")
    refused = httpx.delete(url, headers=gateway.auth, timeout=30)
    assert_problem(refused, 409, "ERR_UPLOAD_ON_HOLD")
    assert "Upload-Deletion-Receipt" not in refused.headers
    assert httpx.get(url, headers=gateway.auth, timeout=30).status_code == 200
    assert httpx.delete(hold_url, headers=admin, timeout=10).json()["held"] is False
    deleted = httpx.delete(url, headers=gateway.auth, timeout=30)
    assert deleted.status_code == 204, deleted.text
    receipt = deleted.headers["Upload-Deletion-Receipt"]
    kid, payload = receipts.verify(receipt, published_keys(gateway))
    assert kid == jws.header_of(receipt)["kid"]
    assert payload["upload_id"] == uid and payload["reason"] == "client"
    assert payload["deleted_by"] == {"principal": "admin", "tenant": "default"}
    assert payload["key_destroyed"] is True and payload["objects_deleted"] is True
    assert isinstance(payload["manifest_jws_sha256"], str)
    assert stored_receipt(gateway, uid) == receipt
    assert gone(gateway, url)


def test_retention_and_expiry_skip_held_uploads(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(
        GATEWAY_RETENTION_DAYS="1", GATEWAY_REAP_INTERVAL=REAP_INTERVAL, GATEWAY_UPLOAD_TTL="2"
    )
    admin = admin_token(server.data_dir)
    old, held_old = upload(server, os.urandom(1000)), upload(server, os.urandom(1000))
    young = upload(server, os.urandom(1000))
    unfinished = create(server, 1000)
    held_unfinished = create(server, 1000)
    assert patch(server, held_unfinished, b"x" * 10, 0).status_code == 204
    for url in (held_old, held_unfinished):
        hold = httpx.put(f"{server.url}/admin/holds/{upload_id(url)}", headers=admin, timeout=10)
        assert hold.status_code == 200
    # Two days old, as far as the catalog knows.
    catalog = sqlite3.connect(server.data_dir / "catalog.sqlite3", timeout=10)
    with catalog:
        for url in (old, held_old):
            catalog.execute(
                "UPDATE uploads SET completed_at = completed_at - ? WHERE id = ?",
                (2 * DAY, upload_id(url)),
            )
    catalog.close()
    wait_for(lambda: gone(server, old) and gone(server, unfinished))
    time.sleep(1.0)  # a few more passes
    for kept in (held_old, young):
        assert httpx.get(kept, headers=server.auth, timeout=30).status_code == 200
    # Past its expiry (410 for the client), but held: still in the catalog, key and all.
    assert httpx.head(held_unfinished, headers=server.auth, timeout=10).status_code == 410
    keys = published_keys(server)
    for url, reason in ((old, "retention"), (unfinished, "expiry")):
        _, payload = receipts.verify(stored_receipt(server, upload_id(url)), keys)
        assert payload["reason"] == reason and payload["deleted_by"] == {"reaper": reason}
    assert "retention" in server.log() and upload_id(old) in server.log()
    # Released: the next passes take them.
    for url in (held_old, held_unfinished):
        release = httpx.delete(
            f"{server.url}/admin/holds/{upload_id(url)}", headers=admin, timeout=10
        )
        assert release.status_code == 200
    wait_for(lambda: gone(server, held_old) and gone(server, held_unfinished))
    assert httpx.get(young, headers=server.auth, timeout=30).status_code == 200


def test_gateway_delete_while_the_gateway_serves(gateway: GatewayProcess) -> None:
    url = upload(gateway, os.urandom(5000))
    uid = upload_id(url)
    where = ("--data-dir", str(gateway.data_dir))
    held = gateway_cli("hold", uid, "--case", "C-9", *where)
    assert held.returncode == 0, held.stderr
    assert_problem(httpx.delete(url, headers=gateway.auth, timeout=30), 409, "ERR_UPLOAD_ON_HOLD")
    refused = gateway_cli("delete", uid, *where)
    assert refused.returncode == 1 and "ERR_UPLOAD_ON_HOLD" in refused.stderr
    assert gateway_cli("release-hold", uid, *where).returncode == 0
    deleted = gateway_cli("delete", uid, "--by", "cli:dpo", *where)
    assert deleted.returncode == 0, deleted.stderr
    _, payload = receipts.verify(deleted.stdout.strip(), published_keys(gateway))
    assert payload["deleted_by"] == {"admin": "cli:dpo"}
    assert gone(gateway, url)
    assert_problem(httpx.delete(url, headers=gateway.auth, timeout=30), 404, "ERR_UPLOAD_NOT_FOUND")
