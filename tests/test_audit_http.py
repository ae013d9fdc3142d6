"""The audit log end to end: a real `gateway serve`, tus requests, GET /audit with
role-checked tokens, then `gateway audit verify` and `export` against the catalog,
whole and tampered with directly in SQLite."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway import audit
from gateway.auth import mint_token
from gateway.catalog.base import AuditQuery, Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.jws import jwks
from gateway.keys.keyring import LocalKeyring
from gateway.layout import data_key
from gateway.manifest import canonical_json
from gateway.roles import ADMIN, AUDITOR
from tests.server import GatewayProcess
from tests.tushttp import (
    assert_problem,
    create,
    flip_stored_byte,
    patch,
    segment_size,
    upload,
    upload_id,
)

FILENAME_B64 = "c3R1ZHkuZGNt"  # "study.dcm"


def token(data_dir: Path, principal: str, tenant: str = "default", *roles: str) -> dict[str, str]:
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        minted = mint_token(catalog, Principal(principal, tenant, frozenset(roles)))
    finally:
        catalog.close()
    return {"Authorization": f"Bearer {minted}", "Tus-Resumable": "1.0.0"}


def audit_query(server: GatewayProcess, headers: dict[str, str], **params: str) -> httpx.Response:
    return httpx.get(f"{server.url}/audit", params=params, headers=headers, timeout=10)


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv], capture_output=True, text=True, timeout=60
    )


def activity(server: GatewayProcess) -> str:
    """An upload, a ranged download, its manifest, a refused reader and a bad token."""
    url = upload(server, os.urandom(5000), [2000, 3000], Upload_Metadata=f"filename {FILENAME_B64}")
    got = httpx.get(
        url, headers={**server.auth, "Range": "bytes=10-99", "X-Request-ID": "req-range-1"}
    )
    assert got.status_code == 206
    assert httpx.get(f"{url}/manifest", headers=server.auth).status_code == 200
    bob = token(server.data_dir, "bob")
    assert httpx.get(url, headers=bob).status_code == 404
    bad = {**server.auth, "Authorization": "Bearer gwt_not-a-token"}
    assert httpx.get(url, headers=bad).status_code == 401
    assert httpx.get(url).status_code == 401  # no credentials at all: not audited
    return url


def test_requests_leave_the_expected_entries(gateway: GatewayProcess) -> None:
    url = activity(gateway)
    uid = upload_id(url)
    # An empty PATCH to the complete upload completes nothing; HEAD is not recorded.
    assert patch(gateway, url, b"", 5000).status_code == 204
    assert httpx.head(url, headers=gateway.auth).status_code == 200
    assert httpx.delete(url, headers=gateway.auth, timeout=30).status_code == 204
    admin = token(gateway.data_dir, "ops", "default", ADMIN)
    response = audit_query(gateway, admin)
    assert response.status_code == 200, response.text
    # The admin sees its tenant's entries: not the token that named no one (6).
    assert [e["seq"] for e in response.json()["entries"]] == [1, 2, 3, 4, 5, 7]
    log = entries(gateway.data_dir)
    assert log[7]["action"] == "audit.queried"
    entries_ = log[:7]
    summary = [(e["action"], e["principal"], e["outcome"], e["code"]) for e in entries_]
    assert summary == [
        ("upload.created", "admin", "ok", None),
        ("upload.completed", "admin", "ok", None),
        ("upload.downloaded", "admin", "ok", None),
        ("manifest.fetched", "admin", "ok", None),
        ("access.refused", "bob", "refused", "ERR_UPLOAD_NOT_FOUND"),
        ("access.refused", None, "refused", "ERR_UNAUTHORIZED"),
        ("upload.deleted", "admin", "ok", None),
    ]
    _, _, downloaded, _, refused, _, deleted = entries_
    assert [e["seq"] for e in entries_] == list(range(1, 8))
    assert downloaded["details"] == {"range": "10-99", "bytes": 90}
    assert downloaded["request_id"] == "req-range-1"
    assert refused["details"] == {"attempted": "GET /files/{id}"}
    assert refused["upload_id"] == uid and refused["tenant"] == "default"
    assert refused["upload_tenant"] is None  # a refusal never tells whose an upload is
    assert downloaded["upload_tenant"] == "default"
    assert deleted["details"] == {"reason": "client"}
    for e in entries_:
        assert e["client"] == "127.0.0.1" and e["request_id"]
    text = json.dumps(entries_)
    for secret in (FILENAME_B64, "study.dcm", gateway.token, "gwt_not-a-token"):
        assert secret not in text
    # A tenant's auditor sees its tenant's entries: not a token that named no one.
    auditor = token(gateway.data_dir, "sec-officer", "default", AUDITOR)
    seen = audit_query(gateway, auditor).json()["entries"]
    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5, 7, 8]  # 8: the admin's query
    by_upload = audit_query(gateway, auditor, upload=uid).json()["entries"]
    assert [e["seq"] for e in by_upload] == [1, 2, 3, 4, 5, 7]


def test_the_audit_log_is_for_auditors_and_admins(gateway: GatewayProcess) -> None:
    activity(gateway)
    other = token(gateway.data_dir, "carol", "clinic-9")
    httpx.post(
        gateway.files_url, headers={**other, "Upload-Length": "3"}, timeout=10
    ).raise_for_status()
    assert_problem(audit_query(gateway, gateway.auth), 403, "ERR_FORBIDDEN")
    reader = token(gateway.data_dir, "rita", "default", "reader")
    assert_problem(audit_query(gateway, reader), 403, "ERR_FORBIDDEN")
    assert audit_query(gateway, {}).status_code == 401
    # An auditor, or an admin, sees its own tenant's entries only.
    local = audit_query(gateway, token(gateway.data_dir, "aud-9", "clinic-9", AUDITOR)).json()
    assert [(e["action"], e["tenant"]) for e in local["entries"]] == [
        ("upload.created", "clinic-9")
    ]
    admin_9 = audit_query(gateway, token(gateway.data_dir, "ops-9", "clinic-9", ADMIN)).json()
    assert [e["action"] for e in admin_9["entries"]] == ["upload.created", "audit.queried"]
    admin = token(gateway.data_dir, "ops", "default", ADMIN)
    everything = audit_query(gateway, admin).json()["entries"]
    assert {e["tenant"] for e in everything} == {"default"}
    refusals = [e for e in everything if e["action"] == "access.refused"]
    assert [r["details"]["attempted"] for r in refusals[-3:]] == [
        "GET /files/{id}",
        "audit.queried",
        "audit.queried",
    ]
    # Paging: `next` is the cursor for `after`.
    first = audit_query(gateway, admin, limit="2").json()
    assert [e["seq"] for e in first["entries"]] == [1, 2] and first["next"] == 2
    rest = audit_query(gateway, admin, after="2", limit="1000").json()
    assert rest["entries"][0]["seq"] == 3 and rest["next"] is None
    bob_only = audit_query(gateway, admin, principal="bob").json()["entries"]
    assert [e["action"] for e in bob_only] == ["access.refused"]
    later = audit_query(gateway, admin, since="2999-01-01T00:00:00Z").json()
    assert later["entries"] == []
    for bad in (
        {"limit": "0"},
        {"since": "yesterday"},
        {"until": "2026-01-01T00:00:00"},
        {"x": "1"},
    ):
        assert_problem(audit_query(gateway, admin, **bad), 400, "ERR_INVALID_AUDIT_QUERY")


# --- the command line: verify, tampered catalogs, export -------------------------------------


@pytest.fixture
def stopped(gateway: GatewayProcess) -> Path:
    """A data dir after some activity and a clean shutdown (which checkpoints the head)."""
    url = activity(gateway)
    assert httpx.delete(url, headers=gateway.auth, timeout=30).status_code == 204
    gateway.stop()
    return gateway.data_dir


def verify(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--data-dir", str(data_dir), *extra)


def tampered(data_dir: Path, tmp_path: Path, *statements: str) -> Path:
    copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(data_dir, copy)
    conn = sqlite3.connect(copy / "catalog.sqlite3")
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    return copy


def first_bad(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 1, result.stdout + result.stderr
    return int(result.stdout.strip().splitlines()[-1].removeprefix("first bad entry: "))


def test_verify_passes_a_whole_log_and_checks_the_shutdown_checkpoint(
    stopped: Path, tmp_path: Path
) -> None:
    result = verify(stopped)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkpoints: 1 verified, the last at entry 7" in result.stdout
    assert result.stdout.strip().endswith("OK: the audit log is whole (7 entries)")
    # The same against the published JWKS, as an auditor without the keys would.
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(
        json.dumps(jwks(LocalKeyring.open(stopped / "keyring.json").public_signing_keys()))
    )
    assert verify(stopped, "--jwks", str(jwks_file)).returncode == 0
    assert verify(stopped, "--jwks", "http://127.0.0.1:1/jwks.json").returncode == 2


def test_verify_names_an_edited_entry(stopped: Path, tmp_path: Path) -> None:
    copy = tampered(
        stopped,
        tmp_path,
        'UPDATE audit_log SET entry = replace(entry, \'"range":"10-99"\', \'"range":"0-9"\') '
        "WHERE seq = 3",
    )
    result = verify(copy)
    assert first_bad(result) == 3, result.stdout


def test_verify_names_a_deleted_entry(stopped: Path, tmp_path: Path) -> None:
    assert (
        first_bad(verify(tampered(stopped, tmp_path, "DELETE FROM audit_log WHERE seq = 4"))) == 4
    )
    renumbered = tampered(
        stopped,
        tmp_path,
        "DELETE FROM audit_log WHERE seq = 4",
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 4",
        "UPDATE audit_log SET seq = seq - 1001 WHERE seq > 1000",
    )
    assert first_bad(verify(renumbered)) == 4


def test_verify_names_reordered_entries(stopped: Path, tmp_path: Path) -> None:
    copy = tampered(
        stopped,
        tmp_path,
        "UPDATE audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = -1",
    )
    assert first_bad(verify(copy)) == 3


def test_verify_names_an_inserted_entry(stopped: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(stopped / "catalog.sqlite3")
    (second,) = conn.execute("SELECT entry, hash FROM audit_log WHERE seq = 2").fetchall()
    conn.close()
    forged = json.loads(second[0]) | {"seq": 3, "prev": second[1], "action": "hold.lifted"}
    text = canonical_json(forged).decode()
    copy = tampered(
        stopped,
        tmp_path,
        "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3",
        "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
        "INSERT INTO audit_log (seq, time, action, principal, tenant, upload_id, entry, hash) "
        f"VALUES (3, '{forged['time']}', 'hold.lifted', 'admin', 'default', "
        f"'{forged['upload_id']}', '{text}', '{audit.entry_hash(text)}')",
    )
    assert first_bad(verify(copy)) == 3


def test_verify_names_a_tail_removed_before_the_last_checkpoint(
    stopped: Path, tmp_path: Path
) -> None:
    copy = tampered(stopped, tmp_path, "DELETE FROM audit_log WHERE seq >= 6")
    result = verify(copy)
    assert first_bad(result) == 6 and "entries 6 to 7 were removed" in result.stdout


def test_entries_after_the_last_checkpoint_have_only_the_chain(
    stopped: Path, tmp_path: Path
) -> None:
    # A command's entry (a hold placed from the CLI) comes after the shutdown checkpoint.
    held = cli("hold", "Zz" * 11, "--data-dir", str(stopped))
    assert held.returncode == 1  # no such upload: refused, and audited
    result = verify(stopped)
    assert result.returncode == 0
    assert "entries 8 to 8 come after the last checkpoint" in result.stdout
    truncated = tampered(stopped, tmp_path, "DELETE FROM audit_log WHERE seq = 8")
    assert verify(truncated).returncode == 0  # what docs/AUDIT.md says cannot be detected
    # Signing the head from the command line covers it.
    signed = cli("audit", "checkpoint", "--data-dir", str(stopped))
    assert signed.stdout.strip() == "checkpoint at entry 8", signed.stderr
    again = cli("audit", "checkpoint", "--data-dir", str(stopped))
    assert again.stdout.strip() == "nothing new to sign"
    truncated = tampered(stopped, tmp_path, "DELETE FROM audit_log WHERE seq = 8")
    assert first_bad(verify(truncated)) == 8


def test_export_writes_json_lines(stopped: Path) -> None:
    out = cli("audit", "export", "--data-dir", str(stopped))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 7
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert all(canonical_json(e).decode() == line for e, line in zip(entries, lines, strict=True))
    since = entries[3]["time"]
    later = cli("audit", "export", "--data-dir", str(stopped), "--since", since)
    assert json.loads(later.stdout.splitlines()[0])["seq"] == 4
    none = cli("audit", "export", "--data-dir", str(stopped), "--until", "2000-01-01T00:00:00Z")
    assert none.stdout == ""
    bad = cli("audit", "export", "--data-dir", str(stopped), "--since", "soon")
    assert bad.returncode == 2
    # Each export is itself recorded.
    again = cli("audit", "export", "--data-dir", str(stopped)).stdout.splitlines()
    assert [json.loads(x)["action"] for x in again[7:]] == ["audit.exported"] * 3


def test_the_reaper_holds_deletes_and_key_commands_are_recorded(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_UPLOAD_TTL="1", GATEWAY_REAP_INTERVAL="0.3")
    where = ("--data-dir", str(server.data_dir))
    admin = token(server.data_dir, "ops", "default", ADMIN)
    unfinished = upload_id(create(server, 100))
    done, kept = upload_id(upload(server, b"x" * 100)), upload_id(upload(server, b"y" * 10))
    hold_url = f"{server.url}/admin/holds/{kept}"
    assert httpx.put(hold_url, headers=admin, json={"case": "LIT-7"}).status_code == 200
    assert httpx.delete(hold_url, headers=admin).status_code == 200
    assert cli("hold", kept, "--case", "LIT-8", "--by", "cli:legal", *where).returncode == 0
    assert cli("delete", done, "--by", "cli:ops", *where).returncode == 0
    assert cli("keys", "rotate", *where).returncode == 0
    assert cli("keys", "rotate-signing", *where).returncode == 0

    def visible() -> list[dict[str, object]]:
        found = audit_query(server, admin, limit="1000").json()["entries"]
        assert isinstance(found, list)
        return found

    deadline = time.monotonic() + 20
    while not any(e["action"] == "upload.expired" for e in visible()):  # on its upload
        assert time.monotonic() < deadline, "the reaper did not remove the upload"
        time.sleep(0.2)
    # The key commands name no tenant: the whole log, as the operator reads it.
    seen = {(e["action"], e["upload_id"]): e for e in entries(server.data_dir)}
    expired = seen[("upload.expired", unfinished)]
    assert (expired["principal"], expired["details"]) == ("reaper", {"reason": "expiry"})
    assert seen[("hold.placed", kept)]["details"] in ({"case": "LIT-7"}, {"case": "LIT-8"})
    assert seen[("hold.lifted", kept)]["principal"] == "ops"
    deleted = seen[("upload.deleted", done)]
    assert (deleted["principal"], deleted["details"]) == ("cli:ops", {"reason": "admin"})
    assert seen[("key.rotated", None)]["details"] == {"kek_version": 2}
    rotated = seen[("key.signing_rotated", None)]["details"]
    assert isinstance(rotated, dict) and isinstance(rotated["kid"], str)
    result = verify(server.data_dir)  # while the gateway runs
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_processes_append_to_one_chain(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_WORKERS="2")
    url = upload(server, os.urandom(2000))

    def download(i: int) -> int:
        ranged = {**server.auth, "Range": f"bytes={i}-{i + 9}"}
        with httpx.Client(timeout=30) as client:  # a connection each: both workers serve
            return client.get(url, headers=ranged).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(download, range(60))) == {206}
    server.stop()
    out = cli("audit", "export", "--data-dir", str(server.data_dir))
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, 63))
    ranges = sorted(e["details"]["range"] for e in entries if e["action"] == "upload.downloaded")
    assert ranges == sorted(f"{i}-{i + 9}" for i in range(60))
    result = verify(server.data_dir)
    assert result.returncode == 0, result.stdout
    assert "the last at entry 62" in result.stdout


def test_a_download_cut_short_is_recorded_as_failed(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_SEGMENT_SIZE="65536")
    seg = segment_size(server)
    url = upload(server, os.urandom(2 * seg + 10))
    flip_stored_byte(server.data_dir, data_key(upload_id(url)), -1)  # the last record's tag
    with httpx.stream("GET", url, headers=server.auth, timeout=30) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    admin = token(server.data_dir, "ops", "default", ADMIN)
    entries = audit_query(server, admin, upload=upload_id(url)).json()["entries"]
    downloads = [
        (e["outcome"], e["code"], e["details"]["range"])
        for e in entries
        if e["action"] == "upload.downloaded"
    ]
    end = f"0-{2 * seg + 9}"
    assert downloads == [("ok", None, end), ("failed", "ERR_STORED_DATA_CORRUPT", end)]


def entries(data_dir: Path) -> list[dict[str, object]]:
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        rows = catalog.audit_records(AuditQuery(limit=10_000))
    finally:
        catalog.close()
    return [json.loads(r.entry) for r in rows]


def test_grants_api_keys_and_throttled_sign_ins_are_audited(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_AUTH_FAILURE_BURST="2", GATEWAY_AUTH_FAILURE_RATE="1")
    url = upload(server, os.urandom(300), [300])
    uid = upload_id(url)
    body = {"principal": "dr-c", "tenant": "clinic-b", "expires_in": 3600}
    made = httpx.post(f"{url}/grants", headers=server.auth, json=body, timeout=10)
    assert made.status_code == 201, made.text
    grant = made.json()["id"]
    assert httpx.delete(f"{url}/grants/{grant}", headers=server.auth).status_code == 204
    where = ("--data-dir", str(server.data_dir))
    created = cli("token", "create", "--principal", "pacs", "--tenant", "north", *where)
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[3]  # "# API key <id> for ..."
    assert cli("token", "revoke", key_id, *where).returncode == 0
    bad = {"Authorization": "Bearer gwt_guess-guess-guess", "Tus-Resumable": "1.0.0"}
    codes = [httpx.head(url, headers=bad).status_code for _ in range(3)]
    assert codes == [401, 401, 429]

    log = entries(server.data_dir)
    by_action = {e["action"]: e for e in log}
    made_entry = by_action["grant.created"]
    assert (made_entry["upload_id"], made_entry["upload_tenant"]) == (uid, "default")
    assert made_entry["details"] == {
        "grant": grant,
        "grantee": "clinic-b/dr-c",
        "expires_at": made.json()["expires_at"],
    }
    assert by_action["grant.revoked"]["details"] == {"grant": grant}
    assert by_action["token.created"]["details"] == {
        "key_id": key_id,
        "subject": "north/pacs",
        "roles": "",
        "expires_at": None,
    }
    assert by_action["token.revoked"]["details"] == {"key_id": key_id}
    assert str(by_action["token.created"]["principal"]).startswith("cli")
    refusals = [e for e in log if e["action"] == "access.refused"]
    assert [r["code"] for r in refusals[-3:]] == [
        "ERR_UNAUTHORIZED",
        "ERR_UNAUTHORIZED",
        "ERR_AUTH_THROTTLED",
    ]
    # No token, no key hash in any entry.
    assert "gwt_" not in json.dumps(log)
