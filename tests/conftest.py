"""Shared fixtures: a real gateway process, and the project's own decrypting reader."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.keyring import LocalKeyring
from gateway.reader import Reader
from tests import server as server_module
from tests.s3server import SeaweedS3
from tests.server import GatewayProcess, S3Target, store_for


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session; use `fresh_bucket()` per test."""
    server = SeaweedS3()
    try:
        server.start()
    except Exception:
        server.close()
        raise
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session", autouse=True)
def _s3_for_blackbox(request: pytest.FixtureRequest) -> Iterator[None]:
    """With GATEWAY_TEST_STORE=s3, every gateway the tests start writes to SeaweedFS."""
    if server_module.TEST_STORE != "s3":
        yield
        return
    s3 = request.getfixturevalue("s3_server")

    def target() -> S3Target:
        return S3Target(s3.endpoint, s3.access_key, s3.secret_key, s3.fresh_bucket("gw"))

    server_module.s3_target_factory = target
    yield
    server_module.s3_target_factory = None


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A fresh `gateway serve` on a free loopback port with its own data dir."""
    server = GatewayProcess(tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways with extra GATEWAY_* settings, e.g. factory(GATEWAY_SEGMENT_SIZE="65536")."""
    started: list[GatewayProcess] = []

    def start(name: str = "data", **env: str) -> GatewayProcess:
        server = GatewayProcess(tmp_path / name, env=dict(env)).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def read_stored(data_dir: Path, upload_id: str) -> bytes:
    """Decrypt a finished upload straight from the data dir, as a downstream reader would."""
    catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        reader = Reader(store_for(data_dir), catalog, LocalKeyring.open(data_dir / "keyring.json"))
        upload = catalog.get_upload(upload_id)
        assert upload is not None, f"no upload {upload_id} in the catalog"
        return b"".join(reader.read(upload))
    finally:
        catalog.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
