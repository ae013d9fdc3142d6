"""The S3 store goes away in the middle of an upload: 503, nothing lost, resume later."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import read_stored
from tests.rawhttp import StreamingPatch
from tests.s3server import SeaweedS3
from tests.server import GatewayProcess, S3Target, store_for
from tests.tushttp import create, error_code, head_offset, patch, upload_id

MiB = 1 << 20


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this test's own: stopping it must not disturb other tests."""
    server = SeaweedS3(tmp_path / "weed")
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_store_outage_mid_patch_then_resume(own_s3: SeaweedS3, tmp_path: Path) -> None:
    target = S3Target(own_s3.endpoint, own_s3.access_key, own_s3.secret_key, "outage")
    gateway = GatewayProcess(
        tmp_path / "data",
        s3=target,
        env={"GATEWAY_SEGMENT_SIZE": str(5 * MiB), "GATEWAY_S3_RETRY_SECONDS": "2"},
    ).start()
    try:
        data = os.urandom(40 * MiB + 12345)
        url = create(gateway, len(data))
        assert patch(gateway, url, data[: 7 * MiB], 0).status_code == 204

        # The store dies while the next PATCH body is arriving.
        streaming = StreamingPatch(gateway, url, data, 7 * MiB, slow_after=12 * MiB).begin()
        assert streaming.reached.wait(60)
        own_s3.kill()
        streaming.join(90)
        assert streaming.response is not None, streaming.error
        assert streaming.response.status_code == 503, streaming.response.text
        assert error_code(streaming.response) == "ERR_STORE_UNAVAILABLE"
        assert int(streaming.response.headers["Retry-After"]) > 0

        ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"].startswith("failed")

        # Only what is durably stored is reported; the client resumes from there.
        offset = head_offset(gateway, url)
        assert 7 * MiB <= offset <= 7 * MiB + streaming.sent
        own_s3.start()
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
        response = patch(gateway, url, data[offset:], offset)
        assert response.status_code == 204, response.text
        assert read_stored(gateway.data_dir, upload_id(url)) == data
    finally:
        gateway.stop()


def test_bucket_holds_no_plaintext(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """Every object the gateway wrote to the bucket, tails included, is ciphertext."""
    target = S3Target(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, s3_server.fresh_bucket()
    )
    gateway = GatewayProcess(
        tmp_path / "data", s3=target, env={"GATEWAY_SEGMENT_SIZE": str(5 * MiB)}
    ).start()
    try:
        pattern = os.urandom(MiB)
        data = pattern * 6 + pattern[:777]
        unfinished = create(gateway, len(data))
        offset = 0
        for size in (1, 1000, 65539, 300_001, 5 * MiB + 3):
            assert (
                patch(gateway, unfinished, data[offset : offset + size], offset).status_code == 204
            )
            offset += size
        finished = create(gateway, len(data))
        assert patch(gateway, finished, data, 0).status_code == 204
        client = s3_server.client()
        names = [o.object_name for o in client.list_objects(target.bucket, recursive=True)]
        assert any("/tail/" in str(n) for n in names), names  # the unfinished one has tails
        assert any(str(n).endswith("/data") for n in names), names
        probes = [pattern[i : i + 32] for i in range(0, MiB - 32, MiB // 97)]
        for name in names:
            blob = client.get_object(target.bucket, str(name)).read()
            for probe in probes:
                assert probe not in blob, f"plaintext found in {name}"
        assert read_stored(gateway.data_dir, upload_id(finished)) == data
        assert store_for(gateway.data_dir).size(f"{upload_id(finished)}/data") > len(data)
    finally:
        gateway.stop()
