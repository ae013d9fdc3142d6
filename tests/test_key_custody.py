"""Where a real gateway's keys live: beside the data by default, sealed under a KEK file."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.keys.base import KeyUnusable
from gateway.keys.envelope import KeyringProtection, open_envelope
from gateway.keys.keyring import UNPROTECTED, LocalKeyring
from tests.server import GatewayProcess, free_port
from tests.tushttp import upload

SEGMENT = 64 * 1024


def _round_trip(server: GatewayProcess, data: bytes) -> str:
    url = upload(server, data, [SEGMENT + 10, len(data) - SEGMENT - 10])
    assert httpx.get(url, headers=server.auth, timeout=30).content == data
    return url


def _readyz(server: GatewayProcess) -> dict[str, object]:
    response = httpx.get(f"{server.url}/readyz", timeout=10)
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


def test_by_default_a_copy_of_the_data_dir_alone_decrypts_an_upload(tmp_path: Path) -> None:
    """The dev default, and what it costs: the keys sit in the data dir, so a copy of
    that folder (a backup, a stolen disk) is all one needs; the gateway says so."""
    data_dir = tmp_path / "data"
    data = os.urandom(2 * SEGMENT + 500)
    server = GatewayProcess(data_dir, env={"GATEWAY_SEGMENT_SIZE": str(SEGMENT)}).start()
    try:
        url = _round_trip(server, data)
        assert _readyz(server)["warnings"] == [UNPROTECTED]
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        assert [r["level"] for r in lines if "keyring is not encrypted" in r["msg"]] == ["warning"]
    finally:
        server.stop()
    copy = tmp_path / "stolen" / "data"
    shutil.copytree(data_dir, copy)
    thief = GatewayProcess(copy, token=server.token, env={"GATEWAY_SEGMENT_SIZE": str(SEGMENT)})
    thief.start()
    try:
        path = httpx.URL(url).path
        assert httpx.get(thief.url + path, headers=thief.auth, timeout=30).content == data
    finally:
        thief.stop()


def _secrets(keyring: Path, protection: KeyringProtection) -> list[bytes]:
    doc, _ = open_envelope(json.loads(keyring.read_bytes()), protection, keyring.name)
    raw = [base64.b64decode(k["key"]) for k in doc["keks"]]
    raw += [base64.b64decode(s["private"]) for s in doc["signing_keys"]]
    return [*raw, *(base64.b64encode(r) for r in raw), protection.secret]


def test_with_a_kek_file_the_data_dir_holds_no_key_material(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    kek_file = secrets_dir / "kek"
    kek_file.write_bytes(os.urandom(32))
    kek_file.chmod(0o600)
    keyring = secrets_dir / "keyring.json"
    env = {
        "GATEWAY_SEGMENT_SIZE": str(SEGMENT),
        "GATEWAY_KEK_FILE": str(kek_file),
        "GATEWAY_KEYRING_PATH": str(keyring),
        "GATEWAY_REQUIRE_PROTECTED_KEYS": "true",
    }
    server = GatewayProcess(data_dir, env=env).start()
    try:
        _round_trip(server, os.urandom(2 * SEGMENT + 500))
        assert _readyz(server)["warnings"] == []
        assert "not encrypted" not in server.log()
    finally:
        server.stop()
    assert not (data_dir / "keyring.json").exists()
    # A copy of the data dir and of the keyring file, without the KEK file.
    stolen = tmp_path / "stolen"
    shutil.copytree(data_dir, stolen / "data")
    shutil.copy2(keyring, stolen / "keyring.json")
    secrets = _secrets(keyring, KeyringProtection.from_file(kek_file.read_bytes()))
    files = [p for p in (stolen / "data").rglob("*") if p.is_file()]
    assert any(p.name.startswith("catalog.sqlite3") for p in files)
    for path in [*files, stolen / "keyring.json"]:
        content = path.read_bytes()
        assert not [s for s in secrets if s in content], f"key material in {path.name}"
    with pytest.raises(KeyUnusable, match="encrypted; set GATEWAY_KEK_FILE"):
        LocalKeyring.open(stolen / "keyring.json")


def test_protected_keys_can_be_required_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "GATEWAY_REQUIRE_PROTECTED_KEYS": "true"}
    env.pop("GATEWAY_KEK_FILE", None)
    port = str(free_port())
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir), "--port", port],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert out.returncode != 0
    assert "GATEWAY_REQUIRE_PROTECTED_KEYS" in out.stderr and "GATEWAY_KEK_FILE" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (data_dir / "keyring.json").exists()
