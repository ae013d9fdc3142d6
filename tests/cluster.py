"""A cluster of gateways for black-box tests and benchmarks: several `gateway serve`
processes sharing one PostgreSQL catalog, one S3 bucket and one keyring (sealed under
a KEK file outside every data dir), each with a data dir of its own."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.rawhttp import StreamingPatch
from tests.server import GatewayProcess, S3Target
from tests.tushttp import create, patch, upload_id

MiB = 1 << 20
SEGMENT = 5 * MiB  # the smallest S3 part


@dataclass
class Cluster:
    root: Path
    catalog_url: str
    s3: S3Target
    gateways: list[GatewayProcess] = field(default_factory=list)

    def __getitem__(self, index: int) -> GatewayProcess:
        return self.gateways[index]

    def start(self, count: int, **env: str) -> Cluster:
        """Start `count` more gateways, one after another (the first creates the keyring)."""
        keys = self.root / "keys"
        if not keys.exists():
            keys.mkdir(mode=0o700, parents=True)
            kek = keys / "kek"
            kek.write_bytes(os.urandom(32))
            kek.chmod(0o600)
        shared = {
            "GATEWAY_CATALOG": self.catalog_url,
            "GATEWAY_KEYRING_PATH": str(keys / "keyring.json"),
            "GATEWAY_KEK_FILE": str(keys / "kek"),
            "GATEWAY_SEGMENT_SIZE": str(SEGMENT),
            **env,
        }
        for _ in range(count):
            name = f"gateway-{len(self.gateways)}"
            gateway = GatewayProcess(self.root / name, env=dict(shared), s3=self.s3)
            self.gateways.append(gateway.start())
        return self

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()


def download(gateway: GatewayProcess, url: str) -> bytes:
    """The upload's plaintext, read through `gateway` (any instance serves any upload)."""
    response = httpx.get(gateway.files_url + upload_id(url), headers=gateway.auth, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


@dataclass
class Switch:
    head: float  # seconds from the HEAD on the new instance to its answer
    total: float  # ... to the end of the PATCH of the rest


def switch_networks(old: GatewayProcess, new: GatewayProcess, data: bytes) -> Switch:
    """A PATCH stalls on `old` (the phone lost its network); the client reconnects to
    `new`, HEADs and PATCHes the rest, which must succeed on its first try."""
    url = create(old, len(data))
    stalled = StreamingPatch(old, url, data, 0, slow_after=MiB, stall=60.0).begin()
    assert stalled.reached.wait(30)
    time.sleep(0.3)  # the body is silent now, as a lost network leaves it
    moved = new.files_url + upload_id(url)
    started = time.monotonic()
    head = httpx.head(moved, headers=new.auth, timeout=30)
    answered = time.monotonic() - started
    assert head.status_code == 200, (head.status_code, head.headers)
    offset = int(head.headers["Upload-Offset"])
    assert offset >= MiB  # what arrived on the old instance was saved, not lost
    response = patch(new, moved, data[offset:], offset)
    assert response.status_code == 204, response.text  # on its first try
    total = time.monotonic() - started
    stalled.wake()
    stalled.join()
    assert download(old, url) == data
    return Switch(answered, total)
