"""The lifecycle commands: token --role, hold, release-hold, delete, receipt [verify]."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway import cli, jws, receipts
from gateway.auth import token_hash
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.keyring import LocalKeyring
from tests.inprocess import app_client, build_app
from tests.tushttp import upload_id


def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def new_upload(data_dir: Path, data: bytes = b"hello") -> str:
    """A finished upload in `data_dir`, sent through an app that is gone again."""
    app, token = build_app(data_dir)
    with app_client(app) as client:
        response = client.post(
            "/files/",
            headers={
                "Authorization": f"Bearer {token}",
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(data)),
                "Content-Type": "application/offset+octet-stream",
            },
            content=data,
        )
    assert response.status_code == 201, response.text
    return upload_id(response.headers["Location"])


def objects_of(data_dir: Path, uid: str) -> list[Path]:
    return list((data_dir / "objects").glob(f"{uid}*"))


def test_a_token_with_the_admin_role(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = gateway(capsys, "token", "--data-dir", str(data_dir), "--role", "admin")
    assert code == 0 and "with roles admin" in out
    token = out.strip().splitlines()[-1]
    code, out, _ = gateway(capsys, "token", "--data-dir", str(data_dir), "--principal", "bob")
    plain = out.strip().splitlines()[-1]
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        admin, bob = (
            catalog.principal_for(token_hash(token)),
            catalog.principal_for(token_hash(plain)),
        )
    finally:
        catalog.close()
    assert admin is not None and admin.roles == frozenset({"admin"})
    assert bob is not None and bob.roles == frozenset()
    with pytest.raises(SystemExit):
        cli.main(["token", "--data-dir", str(data_dir), "--role", "superuser"])


def test_hold_delete_release_delete_receipt(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    uid = new_upload(data_dir)
    where = ("--data-dir", str(data_dir))
    code, out, _ = gateway(capsys, "hold", uid, "--case", "LIT-7", "--by", "cli:ops", *where)
    assert code == 0
    held = json.loads(out)
    assert (held["held"], held["case"], held["placed_by"]) == (True, "LIT-7", "cli:ops")
    code, _, err = gateway(capsys, "delete", uid, *where)
    assert code == 1 and "ERR_UPLOAD_ON_HOLD" in err
    assert objects_of(data_dir, uid)
    code, out, _ = gateway(capsys, "release-hold", uid, *where)
    assert code == 0 and json.loads(out) == {"upload_id": uid, "held": False}
    code, out, _ = gateway(capsys, "delete", uid, "--by", "cli:ops", *where)
    assert code == 0
    receipt = out.strip()
    assert not objects_of(data_dir, uid)
    code, out, _ = gateway(capsys, "receipt", uid, *where)
    assert code == 0 and out.strip() == receipt
    keys = {k.kid: k for k in LocalKeyring.open(data_dir / "keyring.json").public_signing_keys()}
    _, payload = receipts.verify(receipt, keys)
    assert payload["deleted_by"] == {"admin": "cli:ops"} and payload["reason"] == "admin"
    code, _, err = gateway(capsys, "delete", uid, *where)
    assert code == 1 and "ERR_UPLOAD_NOT_FOUND" in err


def test_refusals(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    uid = new_upload(data_dir)
    where = ("--data-dir", str(data_dir))
    code, _, err = gateway(capsys, "hold", uid, "--case", "Jane Doe", *where)
    assert code == 2 and "ERR_INVALID_CASE_REFERENCE" in err
    code, _, err = gateway(capsys, "hold", "B" * 22, *where)
    assert code == 1 and "ERR_UPLOAD_NOT_FOUND" in err
    code, _, err = gateway(capsys, "hold", "no/such", *where)
    assert code == 2 and "not an upload id" in err
    code, _, err = gateway(capsys, "receipt", uid, *where)  # not deleted: no receipt
    assert code == 1 and "no deletion receipt" in err
    code, _, err = gateway(capsys, "receipt", "a", "b", *where)
    assert code == 2


def test_receipt_verify(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uid = new_upload(data_dir)
    where = ("--data-dir", str(data_dir))
    assert gateway(capsys, "delete", uid, *where)[0] == 0
    receipt_file = tmp_path / "receipt.jws"
    code, out, _ = gateway(capsys, "receipt", uid, *where)
    receipt_file.write_text(out)
    # With the configured keys.
    code, out, _ = gateway(capsys, "receipt", "verify", str(receipt_file), *where)
    assert code == 0 and out.startswith("OK: a deletion receipt signed by ")
    payload = json.loads(out.split("\n", 1)[1])
    assert payload["upload_id"] == uid and payload["key_destroyed"] is True
    # With a JWKS file, as an auditor without the gateway's keys has it.
    keyring = LocalKeyring.open(data_dir / "keyring.json")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jws.jwks(keyring.public_signing_keys())))
    elsewhere = ("--data-dir", str(tmp_path / "empty"))
    code, out, _ = gateway(
        capsys, "receipt", "verify", str(receipt_file), "--jwks", str(jwks_file), *elsewhere
    )
    assert code == 0 and json.loads(out.split("\n", 1)[1]) == payload
    # From stdin.
    monkeypatch.setattr("sys.stdin", io.StringIO(receipt_file.read_text()))
    assert gateway(capsys, "receipt", "verify", "-", *where)[0] == 0
    # Tampered: refused, saying why.
    header, body, signature = receipt_file.read_text().strip().split(".")
    receipt_file.write_text(f"{header}.{body}.{signature[::-1]}")
    code, out, _ = gateway(capsys, "receipt", "verify", str(receipt_file), *where)
    assert code == 1 and out.startswith("FAILED:")
    # No keys at hand, or a JWKS over plain http: refused.
    code, _, err = gateway(capsys, "receipt", "verify", str(receipt_file), *elsewhere)
    assert code == 2 and "--jwks" in err
    code, _, err = gateway(
        capsys,
        "receipt",
        "verify",
        str(receipt_file),
        "--jwks",
        "http://127.0.0.1:9/.well-known/jwks.json",
        *where,
    )
    assert code == 2 and "http://" in err


def test_an_http_jwks_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for url in ("http://127.0.0.1:9/jwks.json", "HTTP://gateway.example/jwks.json"):
        code, _, err = gateway(capsys, "receipt", "verify", str(tmp_path / "none"), "--jwks", url)
        assert code == 2 and "refusing an http:// JWKS" in err
