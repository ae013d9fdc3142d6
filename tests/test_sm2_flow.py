"""Suite-2 manifests end to end against a real gateway: the SM2 form written by the
completion path's signer, served (GET /files/{id}/manifest, the SM2 keys' JWKS and PEM),
and checked by `gateway verify`, untouched, tampered and with the wrong keys.

The gateway runs with GATEWAY_CRYPTO_SUITE=sm: its uploads are suite 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from gateway import jws, manifest
from gateway.layout import data_key, manifest_keys, sm2_manifest_keys
from gateway.reader import read_header
from gateway.sealed import Header
from gateway.sm2 import ALG_SM2, Sm2PublicKey, Sm2SigningKey, generate
from tests.server import GatewayProcess, store_for
from tests.test_verify import assert_all_ok, assert_fails, verify
from tests.tushttp import upload, upload_id

SERVER_ENV = {"GATEWAY_SEGMENT_SIZE": "65536", "GATEWAY_CRYPTO_SUITE": "sm"}
SM2_MEDIA = "application/imgw-manifest+sm2"


@pytest.fixture
def suite2(server: GatewayProcess) -> str:
    uid = upload_id(upload(server, os.urandom(150_000)))
    header = Header.decode(read_header(store_for(server.data_dir), data_key(uid)))
    assert header.suite == manifest.SUITE_SM  # a suite-2 upload: SM4-GCM and SM3
    return uid


def get(server: GatewayProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=headers, timeout=30)


def save(tmp_path: Path, server: GatewayProcess, path: str) -> str:
    response = get(server, path)
    assert response.status_code == 200, response.text
    target = tmp_path / path.rpartition("/")[2]
    target.write_bytes(response.content)
    return str(target)


def test_the_stored_sm2_form_beside_the_jws(server: GatewayProcess, suite2: str) -> None:
    store = store_for(server.data_dir)
    json_key, jws_key = manifest_keys(suite2)
    stored_sm2, sealed_sm2 = sm2_manifest_keys(suite2)
    token = store.get(stored_sm2).decode("ascii")
    assert jws.header_of(token)["alg"] == ALG_SM2
    assert manifest.payload(token) == store.get(json_key)
    assert manifest.payload(store.get(jws_key).decode()) == store.get(json_key)
    assert b"sha256_hmac" not in store.get(sealed_sm2)  # the reader's form is sealed


def test_the_sm2_keys_are_published_apart_from_the_jwks(
    server: GatewayProcess, suite2: str, tmp_path: Path
) -> None:
    jwks = get(server, "/.well-known/jwks.json").json()
    assert all(k.get("crv") != "SM2" for k in jwks["keys"])
    response = get(server, "/.well-known/sm2-manifest-keys.json")  # no token needed
    assert response.status_code == 200
    entries = response.json()["keys"]
    assert entries
    assert all((e["kty"], e["crv"], e["alg"]) == ("EC", "SM2", ALG_SM2) for e in entries)
    keys = jws.keys_from_jwks(response.json())
    pem = get(server, "/.well-known/sm2-manifest-keys.pem")
    assert pem.status_code == 200 and pem.headers["content-type"].startswith("application/x-pem")
    first = entries[0]["kid"]
    assert pem.text.startswith(f"kid: {first}\n-----BEGIN PUBLIC KEY-----")
    key = keys[first].key
    assert isinstance(key, Sm2PublicKey) and key.pem() in pem.text
    # The reader's SM2 form, for the owner, verifies against the published keys.
    served = get(server, f"/files/{suite2}/manifest", **server.auth, Accept=SM2_MEDIA)
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith(SM2_MEDIA)
    reader = manifest.verify_sm2(served.text, keys)
    assert reader["view"] == "reader" and "sha256" in reader["plaintext"]  # type: ignore[operator]
    jws_form = get(server, f"/files/{suite2}/manifest", **server.auth)
    assert manifest.payload(jws_form.text) == manifest.payload(served.text)
    assert get(server, f"/files/{suite2}/manifest", Accept=SM2_MEDIA).status_code == 401


def test_a_suite_1_upload_has_no_sm2_form(tmp_path: Path) -> None:
    server = GatewayProcess(tmp_path / "aes").start()  # the default suite
    try:
        uid = upload_id(upload(server, b"suite one"))
        response = get(server, f"/files/{uid}/manifest", **server.auth, Accept=SM2_MEDIA)
        assert response.status_code == 404, response.text
        assert not any("sm2" in line for line in verify(server, uid).checks)
    finally:
        server.stop()


def test_verify_checks_the_sm2_signature(server: GatewayProcess, suite2: str) -> None:
    result = verify(server, suite2)
    assert_all_ok(result)
    assert "sm2 signature: SM2 with SM3 by sm2-" in result.stdout, str(result)
    assert "(the current SM2 key)" in result.stdout, str(result)
    assert "ok    reader manifest sm2:" in result.stdout, str(result)


def test_verify_with_both_jwks_files(server: GatewayProcess, suite2: str, tmp_path: Path) -> None:
    main = save(tmp_path, server, "/.well-known/jwks.json")
    sm2_keys = save(tmp_path, server, "/.well-known/sm2-manifest-keys.json")
    assert_all_ok(verify(server, suite2, "--jwks", main, "--jwks", sm2_keys))
    without = verify(server, suite2, "--jwks", main)
    assert_fails(without, "sm2")
    assert "unknown kid 'sm2-" in without.stdout, str(without)
    twice = verify(server, suite2, "--jwks", main, "--jwks", main)
    assert twice.code == 2 and "more than one JWKS" in twice.stderr, str(twice)


def test_verify_with_an_unknown_sm2_key_fails(
    server: GatewayProcess, suite2: str, tmp_path: Path
) -> None:
    main = save(tmp_path, server, "/.well-known/jwks.json")
    kid = jws.header_of(store_for(server.data_dir).get(sm2_manifest_keys(suite2)[0]).decode())[
        "kid"
    ]
    assert isinstance(kid, str)
    private, public = generate()
    other = Sm2SigningKey(kid, private, Sm2PublicKey(public))
    impostor = tmp_path / "impostor.json"
    key = jws.PublicSigningKey(kid, ALG_SM2, other.public_key)
    impostor.write_text(json.dumps(jws.jwks([key])))
    result = verify(server, suite2, "--jwks", main, "--jwks", str(impostor))
    assert_fails(result, "sm2")
    assert "bad signature" in result.stdout, str(result)


@pytest.mark.parametrize("part", [1, 2], ids=["payload", "signature"])
def test_a_tampered_sm2_form_fails(server: GatewayProcess, suite2: str, part: int) -> None:
    store = store_for(server.data_dir)
    key = sm2_manifest_keys(suite2)[0]
    parts = store.get(key).decode().split(".")
    if part == 1:
        doc = json.loads(jws.b64url_decode(parts[1], "payload"))
        doc["plaintext"]["size"] += 1
        parts[1] = jws.b64url(manifest.canonical_json(doc))
    else:
        raw = bytearray(jws.b64url_decode(parts[2], "signature"))
        raw[5] ^= 1
        parts[2] = jws.b64url(bytes(raw))
    store.put(key, ".".join(parts).encode())
    result = verify(server, suite2)
    assert_fails(result, "sm2")
    assert "bad signature" in result.stdout, str(result)


def test_a_missing_sm2_form_fails(server: GatewayProcess, suite2: str) -> None:
    store_for(server.data_dir).delete(sm2_manifest_keys(suite2)[0])
    result = verify(server, suite2)
    assert_fails(result, "sm2")
    assert "a suite-2 manifest needs one" in result.stdout, str(result)
