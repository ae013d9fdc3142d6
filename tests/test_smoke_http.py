"""The shortest end-to-end path: create, patch, head, read back the stored bytes."""

from __future__ import annotations

import os

import httpx

from tests.conftest import read_stored
from tests.server import GatewayProcess


def test_create_patch_and_read_back(gateway: GatewayProcess) -> None:
    data = os.urandom(300_000)
    with httpx.Client(headers=gateway.auth, timeout=30) as client:
        created = client.post(gateway.files_url, headers={"Upload-Length": str(len(data))})
        assert created.status_code == 201
        url = created.headers["Location"]
        patched = client.patch(
            url,
            content=data,
            headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert patched.status_code == 204, patched.text
        assert patched.headers["Upload-Offset"] == str(len(data))
        head = client.head(url)
        assert head.headers["Upload-Offset"] == str(len(data))
    assert read_stored(gateway.data_dir, url.rsplit("/", 1)[1]) == data
