"""Shared fixtures: gateway processes (per test or per module), SeaweedFS, a decrypting reader,
a runner."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.keyring import LocalKeyring
from gateway.reader import Reader
from gateway.runner import Runner
from tests import server as server_module
from tests.postgres import dsn, postgres  # noqa: F401 - the session's PostgreSQL server
from tests.s3server import SeaweedS3
from tests.server import GatewayProcess, S3Target, store_for
from tests.softhsm import softhsm  # noqa: F401 - the session's SoftHSM2 token
from tests.tushttp import Tus, object_dirs, start_server, tree, tus_client


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    """A runner of the gateway's lanes (two sealing threads, two storage threads)."""
    r = Runner(2)
    yield r
    r.close()


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


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway process for a test module, with the module's `SERVER_ENV` settings."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    proc = start_server(tmp_path_factory, name, getattr(request.module, "SERVER_ENV", None))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An httpx client that checks Tus-Resumable on every response (tus_client)."""
    with tus_client() as c:
        yield c


@pytest.fixture(scope="module")
def tus(server: GatewayProcess, client: httpx.Client) -> Tus:
    return Tus(server, client)


@pytest.fixture
def untouched(tus: Tus) -> Iterator[None]:
    """The test must leave no new upload and no new file anywhere near the data dir."""
    root = tus.data_dir.parent
    objects, files = object_dirs(tus.data_dir), _files_outside_the_catalog(root)
    yield
    assert object_dirs(tus.data_dir) == objects, "a refused request created an upload"
    assert _files_outside_the_catalog(root) == files, "a refused request created a file"


def _files_outside_the_catalog(root: Path) -> set[str]:
    # The catalog's WAL and journal files come and go with every query; they are not uploads.
    return {p for p in tree(root) if "catalog.sqlite3" not in p}


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
