"""Keys in a token (SoftHSM2 over PKCS#11): a real gateway whose data dir holds no key
material, so a copy of it decrypts nothing and can re-sign nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from gateway import jws, manifest
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import load_settings
from gateway.keys.base import KEY_REFRESH_SECONDS
from gateway.keys.envelope import SEALED_FORMAT
from gateway.keys.keyring import LocalKeyring
from gateway.keys.pkcs11 import Pkcs11Provider
from tests.fakes import upload_row
from tests.server import GatewayProcess
from tests.softhsm import SoftHsmToken

SEGMENT = 64 * 1024

# tuspy opens the file anew for every request and never closes it (tusclient 1.1).
pytestmark = pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")


def _tus_upload(server: GatewayProcess, path: Path) -> str:
    uploader = tus_client.TusClient(
        server.files_url, headers={"Authorization": server.auth["Authorization"]}
    ).uploader(file_path=str(path), chunk_size=3 * SEGMENT + 17, metadata={"filename": "x.dcm"})
    uploader.upload()
    assert uploader.url is not None
    return str(uploader.url)


def _dek(data_dir: Path, upload_id: str, keys: Pkcs11Provider) -> bytes:
    """The upload's data key, unwrapped by the token (as only the token can)."""
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        upload = catalog.get_upload(upload_id)
        assert upload is not None
        wrapped = catalog.wrapped_key(upload.dek_id)
        assert wrapped is not None and wrapped.kek_id == keys.kek_id
        return keys.unwrap(wrapped, upload_id=upload_id, dek_id=upload.dek_id)
    finally:
        catalog.close()


def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


@pytest.mark.parametrize("alg", ["Ed25519", "ES256"])
def test_a_gateway_on_a_token_keeps_no_key_material_beside_the_data(
    softhsm: SoftHsmToken, tmp_path: Path, alg: str
) -> None:
    """ES256: the signing key a token without EdDSA gets; the gateway signs with whichever
    key the token holds."""
    prefix = f"c{secrets.token_hex(4)}-"
    env = {
        **softhsm.env(prefix),
        "GATEWAY_SEGMENT_SIZE": str(SEGMENT),
        "GATEWAY_REQUIRE_PROTECTED_KEYS": "true",
    }
    keys = Pkcs11Provider(
        softhsm.module,
        softhsm.label,
        softhsm.pin,
        kek_label=env["GATEWAY_PKCS11_KEK_LABEL"],
        signing_label=env["GATEWAY_PKCS11_SIGNING_LABEL"],
        signing_alg=alg,
    )
    try:
        keys.init()  # what `gateway keys init` does
        _check(env, keys, tmp_path, softhsm.pin)
    finally:
        keys.close()


def _check(env: dict[str, str], keys: Pkcs11Provider, tmp_path: Path, pin: str) -> None:
    data_dir = tmp_path / "data"
    source = tmp_path / "scan.dcm"
    data = os.urandom(5 * SEGMENT + 321)
    source.write_bytes(data)
    server = GatewayProcess(data_dir, env=env).start()
    try:
        url = _tus_upload(server, source)
        upload_id = url.rstrip("/").rsplit("/", 1)[1]
        download = httpx.get(url, headers=server.auth, timeout=30)
        assert download.status_code == 200 and download.content == data
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["warnings"] == []
        real_jwks = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
        token = httpx.get(f"{url}/manifest", headers=server.auth, timeout=30).text
    finally:
        server.stop()
    assert pin not in server.log()
    # The manifest is signed in the token; the JWKS publishes the public half.
    real_keys = jws.keys_from_jwks(real_jwks)
    signer = keys.signing_key()
    assert list(real_keys) == [signer.kid]
    assert real_keys[signer.kid].alg == signer.alg == jws.header_of(token)["alg"]
    assert jws.header_of(token)["kid"] == signer.kid
    doc = manifest.verify(token, real_keys)
    assert doc["plaintext"]["sha256"] == hashlib.sha256(data).hexdigest()  # type: ignore[index]
    # `gateway verify` with the published JWKS, decrypting through the token.
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(real_jwks))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "verify",
            upload_id,
            "--data-dir",
            str(data_dir),
            "--jwks",
            str(jwks_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "plaintext" in out.stdout and "skip  plaintext" not in out.stdout

    # No key material in the data dir: no keyring, and not the data key in any form.
    assert not (data_dir / "keyring.json").exists()
    dek = _dek(data_dir, upload_id, keys)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.startswith("catalog.sqlite3") for p in files)
    assert any("objects" in p.parts for p in files)
    for path in files:
        content = path.read_bytes()
        found = [f for f in _forms(dek) if f in content]
        assert not found, f"the data key is in {path.relative_to(data_dir)}"
        assert SEALED_FORMAT.encode() not in content and b'"keks"' not in content

    # A copy of the data dir, served without the token (the default keyring provider):
    # the gateway refuses to start, its keys do not unwrap the catalog's key check.
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(data_dir, copy)
    plain = {k: v for k, v in env.items() if not k.startswith(("GATEWAY_PKCS11", "GATEWAY_KEY"))}
    plain["GATEWAY_REQUIRE_PROTECTED_KEYS"] = "false"
    with pytest.raises(RuntimeError, match="must use the same key provider"):
        GatewayProcess(copy, token=server.token, env=plain).start()
    # With the checks deleted from the copy, it serves, but no plaintext comes out.
    with sqlite3.connect(copy / "catalog.sqlite3") as conn:
        conn.execute("DELETE FROM key_checks")
    conn.close()
    thief = GatewayProcess(copy, token=server.token, env=plain).start()
    try:
        stolen = httpx.get(thief.url + httpx.URL(url).path, headers=thief.auth, timeout=30)
        thief_jwks = httpx.get(f"{thief.url}/.well-known/jwks.json", timeout=10).json()
    finally:
        thief.stop()
    assert stolen.status_code == 500
    assert stolen.json()["code"] == "ERR_STORED_DATA_CORRUPT"
    assert data[:SEGMENT] not in stolen.content
    # The copy got a keyring of its own: what it signs does not verify with the real JWKS.
    forger = LocalKeyring.open(copy / "keyring.json").signing_key()
    assert forger.kid in jws.keys_from_jwks(thief_jwks)
    forged = jws.sign(jws.payload_of(token), typ=manifest.JWS_TYP, key=forger)
    with pytest.raises(manifest.ManifestError):
        manifest.verify(forged, real_keys)


def _wrapped_version(data_dir: Path, upload_id: str) -> int:
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        upload = catalog.get_upload(upload_id)
        assert upload is not None
        wrapped = catalog.wrapped_key(upload.dek_id)
        assert wrapped is not None
        return wrapped.kek_version
    finally:
        catalog.close()


def test_a_running_gateway_picks_up_keys_rotated_by_another_process(
    softhsm: SoftHsmToken, tmp_path: Path
) -> None:
    prefix = f"r{secrets.token_hex(4)}-"
    env = {**softhsm.env(prefix), "GATEWAY_SEGMENT_SIZE": str(SEGMENT)}
    admin = Pkcs11Provider(
        softhsm.module,
        softhsm.label,
        softhsm.pin,
        kek_label=env["GATEWAY_PKCS11_KEK_LABEL"],
        signing_label=env["GATEWAY_PKCS11_SIGNING_LABEL"],
    )
    data = os.urandom(2 * SEGMENT + 5)
    source = tmp_path / "scan.dcm"
    source.write_bytes(data)
    server = GatewayProcess(tmp_path / "data", env=env)
    try:
        admin.init()
        server.start()
        first_kid = admin.signing_key().kid
        before = _tus_upload(server, source)
        admin.rotate()
        second_kid = admin.rotate_signing()
        time.sleep(KEY_REFRESH_SECONDS + 0.5)
        after = _tus_upload(server, source)
        ids = [u.rstrip("/").rsplit("/", 1)[1] for u in (before, after)]
        assert [_wrapped_version(server.data_dir, i) for i in ids] == [1, 2]
        jwks_doc = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
        published = jws.keys_from_jwks(jwks_doc)
        assert set(published) == {first_kid, second_kid}
        for url, kid in ((before, first_kid), (after, second_kid)):
            token = httpx.get(f"{url}/manifest", headers=server.auth, timeout=30).text
            assert jws.header_of(token)["kid"] == kid
            manifest.verify(token, published)
            assert httpx.get(url, headers=server.auth, timeout=30).content == data
        admin.retire_signing(first_kid)
        time.sleep(KEY_REFRESH_SECONDS + 0.5)
        jwks_doc = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=10).json()
        assert set(jws.keys_from_jwks(jwks_doc)) == {second_kid}
    finally:
        server.stop()
        admin.close()


def _keys_cli(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", command, "--data-dir", str(data_dir), *rest],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_the_keys_commands_on_a_token(softhsm: SoftHsmToken, tmp_path: Path) -> None:
    """`gateway keys ...` with GATEWAY_KEY_PROVIDER=pkcs11: init, rotate, rewrap (the token
    records no creation time, so rewrap waits once), rotate-signing, retire, list."""
    prefix = f"k{secrets.token_hex(4)}-"
    env = softhsm.env(prefix)
    data = tmp_path / "data"
    init = _keys_cli(data, env, "init")
    assert init.returncode == 0 and "created KEK" in init.stdout, init.stdout + init.stderr
    admin = Pkcs11Provider.from_settings(load_settings({"data_dir": data}, environ=env))
    data.mkdir()
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        deks = {}
        for i in range(5):
            row = upload_row(f"up{i}")
            deks[row.id] = (row.dek_id, os.urandom(32))
            catalog.create_upload(
                row, admin.wrap(deks[row.id][1], upload_id=row.id, dek_id=row.dek_id)
            )
        rotated = _keys_cli(data, env, "rotate")
        assert rotated.returncode == 0 and "version 2 is current" in rotated.stdout, rotated.stderr
        rewrap = _keys_cli(data, env, "rewrap", "--batch-size", "2")
        assert rewrap.returncode == 0, rewrap.stdout + rewrap.stderr
        assert "rewrapped: 5" in rewrap.stdout and "waiting" in rewrap.stderr, rewrap.stderr
        assert catalog.wrapped_key_counts() == {(admin.kek_id, 2): 5}
        for upload_id, (dek_id, dek) in deks.items():
            wrapped = catalog.wrapped_key(dek_id)
            assert wrapped is not None
            assert admin.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id) == dek
        signing = _keys_cli(data, env, "rotate-signing")
        assert signing.returncode == 0, signing.stderr
        new_kid = signing.stdout.splitlines()[-1]
        listing = _keys_cli(data, env, "list")
        assert listing.returncode == 0, listing.stderr
        assert f"pkcs11:{softhsm.label}/{prefix}gateway-kek" in listing.stdout
        assert re.search(r"^\* +2 .*5 +\(current\)$", listing.stdout, re.M), listing.stdout
        (old_kid,) = [k.kid for k in admin.signing_keys() if k.kid != new_kid]
        retired = _keys_cli(data, env, "retire", old_kid)
        assert retired.returncode == 0, retired.stderr
        admin.refresh()
        states = {k.kid: k.state.value for k in admin.signing_keys()}
        assert states == {old_kid: "retired", new_kid: "signing"}
        assert softhsm.pin not in "".join(
            r.stdout + r.stderr for r in (init, rotated, rewrap, signing, listing, retired)
        )
    finally:
        catalog.close()
        admin.close()


def _cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={**os.environ, **env},
    )


def test_a_deletion_on_a_token_is_signed_and_verified_by_the_token(
    softhsm: SoftHsmToken, tmp_path: Path
) -> None:
    """`gateway delete` signs the receipt in the token; `gateway receipt verify` without
    --jwks checks it with the token's public keys (there is no keyring file)."""
    env = softhsm.env(f"d{secrets.token_hex(4)}-")
    data = tmp_path / "data"
    data.mkdir()
    assert _cli(env, "keys", "init", "--data-dir", str(data)).returncode == 0
    admin = Pkcs11Provider.from_settings(load_settings({"data_dir": data}, environ=env))
    row = upload_row("Q" * 22)
    catalog = SQLiteCatalog(data / "catalog.sqlite3")
    try:
        catalog.create_upload(row, admin.wrap(os.urandom(32), upload_id=row.id, dek_id=row.dek_id))
    finally:
        catalog.close()
    deleted = _cli(env, "delete", row.id, "--data-dir", str(data))
    assert deleted.returncode == 0, deleted.stderr
    receipt = deleted.stdout.strip()
    assert jws.header_of(receipt)["kid"] == admin.signing_key().kid
    checked = _cli(env, "receipt", "verify", "-", "--data-dir", str(data), stdin=receipt)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK: a deletion receipt signed by" in checked.stdout
    admin.close()
