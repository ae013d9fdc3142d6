"""A real `gateway serve` process on a free loopback port, for black-box tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway import auth
from gateway.catalog.base import Catalog, Principal
from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.store.base import ObjectStore
from gateway.store.folder import FolderStore
from gateway.store.s3 import S3Settings, S3Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mint_token(
    data_dir: Path, principal: str = "admin", tenant: str = "default", *, catalog_url: str = ""
) -> str:
    """An API key in the data dir's catalog (or the PostgreSQL one at `catalog_url`),
    made in this process: what `gateway token create` stores, without an audit entry of
    its own (tests count entries)."""
    catalog: Catalog
    if catalog_url:
        catalog = PostgresCatalog(catalog_url)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        catalog = SQLiteCatalog(data_dir / "catalog.sqlite3")
    try:
        return auth.mint_token(catalog, Principal(principal, tenant))
    finally:
        catalog.close()


# GATEWAY_TEST_STORE=s3 runs the black-box tests against a real S3 server (SeaweedFS,
# started once per session by tests/conftest.py) instead of the local folder.
TEST_STORE = os.environ.get("GATEWAY_TEST_STORE", "folder")
S3_MIN_SEGMENT = 5 << 20


@dataclass
class S3Target:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {
            "GATEWAY_STORE": f"s3://{self.bucket}",
            "GATEWAY_S3_ENDPOINT": self.endpoint,
            "GATEWAY_S3_ACCESS_KEY": self.access_key,
            "GATEWAY_S3_SECRET_KEY": self.secret_key,
            "GATEWAY_S3_RETRY_SECONDS": "3",
        }

    def store(self) -> ObjectStore:
        return S3Store(
            S3Settings(
                endpoint=self.endpoint,
                bucket=self.bucket,
                access_key=self.access_key,
                secret_key=self.secret_key,
                create_bucket=False,
            )
        )


# Set by the session fixture when TEST_STORE is "s3": makes a fresh bucket per server.
s3_target_factory: Callable[[], S3Target] | None = None
# Which store each data dir's server writes to, for read_stored and the plaintext scans.
STORES: dict[Path, Callable[[], ObjectStore]] = {}
S3_TARGETS: dict[Path, S3Target] = {}


def store_for(data_dir: Path) -> ObjectStore:
    factory = STORES.get(data_dir)
    return factory() if factory is not None else FolderStore(data_dir / "objects")


@dataclass
class GatewayProcess:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    s3: S3Target | None = None

    def __post_init__(self) -> None:
        # Absolute Location headers, as most tests use them as URLs; GATEWAY_PUBLIC_URL=""
        # gives the default, relative ones (tests/test_http_edge.py).
        self.env = {"GATEWAY_PUBLIC_URL": self.url, **self.env}
        if self.s3 is None and TEST_STORE == "s3" and s3_target_factory is not None:
            # Processes sharing a data dir share its bucket too.
            self.s3 = S3_TARGETS.get(self.data_dir) or s3_target_factory()
        if self.s3 is not None:
            S3_TARGETS[self.data_dir] = self.s3
        if self.s3 is not None:
            segment = int(self.env.get("GATEWAY_SEGMENT_SIZE", S3_MIN_SEGMENT))
            self.env = {
                **self.s3.env(),
                **self.env,
                "GATEWAY_SEGMENT_SIZE": str(max(segment, S3_MIN_SEGMENT)),
            }
            STORES[self.data_dir] = self.s3.store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def files_url(self) -> str:
        return f"{self.url}/files/"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Tus-Resumable": "1.0.0"}

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        if not self.token:
            self.token = mint_token(self.data_dir, catalog_url=self.env.get("GATEWAY_CATALOG", ""))
        env = {**os.environ, **self.env}
        self.log_path = self.data_dir.parent / f"gateway-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM by PID, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
