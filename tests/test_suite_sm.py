"""Suite 2 (SM4-GCM, SM3) end to end: a real `gateway serve` on a folder and on S3.

One data dir (and bucket) switches GATEWAY_CRYPTO_SUITE between restarts: uploads sealed
under either suite keep downloading (whole and by Range), concatenate across suites, and
verify against their manifests with `gateway verify`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.layout import data_key
from tests.s3server import SeaweedS3
from tests.server import GatewayProcess, S3Target, store_for
from tests.tushttp import (
    checksum_header,
    create,
    manifest_json,
    patch_headers,
    segment_size,
    upload,
    upload_id,
)

Start = Callable[[str], GatewayProcess]


@pytest.fixture(params=["folder", "s3"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    """Start (again) a gateway on one data dir, sealing under the suite named."""
    s3: S3Target | None = None
    env = {"GATEWAY_SEGMENT_SIZE": "65536"}
    if request.param == "s3":
        server: SeaweedS3 = request.getfixturevalue("s3_server")
        bucket = server.fresh_bucket("sm")
        s3 = S3Target(server.endpoint, server.access_key, server.secret_key, bucket)
    running: list[GatewayProcess] = []

    def begin(suite: str) -> GatewayProcess:
        for old in running:
            old.stop()
        proc = GatewayProcess(tmp_path / "data", env={**env, "GATEWAY_CRYPTO_SUITE": suite}, s3=s3)
        running.append(proc.start())
        return proc

    try:
        yield begin
    finally:
        for proc in running:
            proc.stop()


def stored_suite(server: GatewayProcess, uid: str) -> int:
    """The suite byte of the stored object's header (FORMAT.md, offset 9)."""
    return store_for(server.data_dir).get(data_key(uid), 0, 10)[9]


def download(server: GatewayProcess, url: str, **headers: str) -> httpx.Response:
    """GET an upload from `server`, whichever gateway process made `url`."""
    own = f"{server.files_url}{upload_id(url)}"
    return httpx.get(own, headers={**server.auth, **headers}, timeout=60)


def assert_reads(server: GatewayProcess, url: str, data: bytes) -> None:
    whole = download(server, url)
    assert whole.status_code == 200, whole.text
    assert whole.content == data
    seg = segment_size(server)
    for lo, hi in [(0, 0), (seg - 5, seg + 5), (len(data) - 7, len(data) - 1)]:
        part = download(server, url, Range=f"bytes={lo}-{hi}")
        assert part.status_code == 206, part.text
        assert part.content == data[lo : hi + 1]


def assert_verifies(server: GatewayProcess, uid: str) -> None:
    command = [sys.executable, "-m", "gateway.cli", "verify", "--data-dir", str(server.data_dir)]
    out = subprocess.run(
        [*command, "--", uid],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **server.env},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    checks = [line.strip() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert checks and all(c.startswith("ok") for c in checks), out.stdout
    assert any(c.startswith("ok    plaintext") for c in checks), out.stdout


def sm3(data: bytes) -> str:
    return hashlib.new("sm3", data).hexdigest()


def test_a_deployment_switches_suites_and_reads_both(start: Start) -> None:
    aes = start("aes")
    seg = segment_size(aes)
    old = os.urandom(seg + 321)
    old_url = upload(aes, old, [seg - 5, len(old) - seg + 5])
    part_one = upload(aes, old[:1000], None, **{"Upload-Concat": "partial"})
    # Begun under suite 1 and finished after the switch: it stays in its own suite.
    moving = os.urandom(seg + 50)
    moving_url = create(aes, len(moving))
    response = httpx.patch(
        moving_url, content=moving[:100], headers=patch_headers(aes, 0), timeout=30
    )
    assert response.status_code == 204, response.text

    sm = start("sm")
    moving_url = f"{sm.files_url}{upload_id(moving_url)}"
    response = httpx.patch(
        moving_url, content=moving[100:], headers=patch_headers(sm, 100), timeout=60
    )
    assert response.status_code == 204, response.text
    new = os.urandom(2 * seg + 17)
    new_url = create(sm, len(new))
    # Two PATCHes, each with an SM3 Upload-Checksum (advertised in Tus-Checksum-Algorithm).
    options = httpx.options(sm.files_url, timeout=30)
    assert "sm3" in options.headers["Tus-Checksum-Algorithm"].split(",")
    for lo, hi in [(0, seg + 9), (seg + 9, len(new))]:
        headers = patch_headers(sm, lo, **{"Upload-Checksum": checksum_header("sm3", new[lo:hi])})
        response = httpx.patch(new_url, content=new[lo:hi], headers=headers, timeout=60)
        assert response.status_code == 204, response.text
    bad = httpx.patch(
        create(sm, 3),
        content=b"abc",
        headers=patch_headers(sm, 0, **{"Upload-Checksum": checksum_header("sm3", b"abd")}),
        timeout=30,
    )
    assert bad.status_code == 460, bad.text
    part_two = upload(sm, new[:2000], None, **{"Upload-Concat": "partial"})
    final = httpx.post(
        sm.files_url,
        headers={
            **sm.auth,
            "Upload-Concat": f"final;/files/{upload_id(part_one)} /files/{upload_id(part_two)}",
        },
        timeout=30,
    )
    assert final.status_code == 201, final.text
    final_url = final.headers["Location"]

    assert stored_suite(sm, upload_id(old_url)) == 1
    assert stored_suite(sm, upload_id(new_url)) == 2
    assert stored_suite(sm, upload_id(moving_url)) == 1
    moved = manifest_json(sm, upload_id(moving_url))
    assert (
        moved["suite"] == 1 and moved["plaintext"]["sha256"] == hashlib.sha256(moving).hexdigest()
    )
    doc = manifest_json(sm, upload_id(new_url))
    assert doc["suite"] == 2 and doc["records"]["merkle"] == "rfc6962-sm3"
    assert doc["plaintext"]["sha256"] == sm3(new)  # the suite's digest, SM3
    assert doc["records"]["count"] == 3
    old_doc = manifest_json(sm, upload_id(old_url))
    assert old_doc["suite"] == 1 and old_doc["records"]["merkle"] == "rfc6962-sha256"
    assert old_doc["plaintext"]["sha256"] == hashlib.sha256(old).hexdigest()

    server = sm
    for suite in ("sm", "aes"):  # and back: a suite-1 gateway reads suite 2 too
        server = sm if suite == "sm" else start("aes")
        assert_reads(server, old_url, old)
        assert_reads(server, new_url, new)
        assert download(server, moving_url).content == moving
        whole = download(server, final_url)
        assert whole.status_code == 200 and whole.content == old[:1000] + new[:2000]
        ranged = download(server, final_url, Range="bytes=990-1010")
        assert ranged.status_code == 206 and ranged.content == (old[:1000] + new[:2000])[990:1011]
    # The final's check covers its partials: one of each suite.
    for url in (new_url, final_url):
        assert_verifies(server, upload_id(url))
