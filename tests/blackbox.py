"""Small helpers shared by the black-box tests that drive a gateway process over HTTP.

`StreamingPatch` sends a PATCH body from a background thread, counting the bytes it
has handed to the socket, so a test can act (kill the server, send a competing
request) while a body is in the middle of arriving.
"""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.server import GatewayProcess, store_for

OCTET = "application/offset+octet-stream"


def create(server: GatewayProcess, length: int | None, **headers: str) -> str:
    """A new upload's absolute URL; `length` None defers the length."""
    h = {**server.auth, **headers}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    response = httpx.post(server.files_url, headers=h, timeout=30)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def patch_headers(server: GatewayProcess, offset: int, **extra: str) -> dict[str, str]:
    return {**server.auth, "Content-Type": OCTET, "Upload-Offset": str(offset), **extra}


def patch(server: GatewayProcess, url: str, data: bytes, offset: int) -> httpx.Response:
    return httpx.patch(url, content=data, headers=patch_headers(server, offset), timeout=60)


def head_offset(server: GatewayProcess, url: str) -> int:
    response = httpx.head(url, headers=server.auth, timeout=30)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])


def error_code(response: httpx.Response) -> str | None:
    if response.headers.get("content-type") != "application/problem+json":
        return None
    code = response.json().get("code")
    return str(code) if code is not None else None


@dataclass
class StreamingPatch:
    """PATCH `data[start:]` from a thread, `chunk` bytes at a time.

    After `slow_after` bytes of the body it sets `reached` and then, until the body
    ends, sleeps `pause` between chunks and (if `stall` is set) stops dead for `stall`
    seconds, so whatever the test does next lands while the body is still arriving.
    """

    server: GatewayProcess
    url: str
    data: bytes
    start: int
    slow_after: int
    chunk: int = 64 * 1024
    pause: float = 0.005
    stall: float = 0.0
    content_length: bool = True
    extra: dict[str, str] = field(default_factory=dict)  # more request headers
    timeout: float = 120.0
    sent: int = 0  # body bytes handed to httpx so far
    response: httpx.Response | None = None
    error: BaseException | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _body(self) -> Iterator[bytes]:
        pos = self.start
        end = len(self.data)
        while pos < end:
            piece = self.data[pos : min(pos + self.chunk, end)]
            yield piece
            pos += len(piece)
            self.sent = pos - self.start
            if self.sent >= self.slow_after:
                if not self.reached.is_set():
                    self.reached.set()
                    if self.stall:
                        self._wake.wait(self.stall)
                time.sleep(self.pause)

    def _run(self) -> None:
        headers = {**patch_headers(self.server, self.start), **self.extra}
        if self.content_length:
            headers["Content-Length"] = str(len(self.data) - self.start)
        try:
            self.response = httpx.patch(
                self.url, content=self._body(), headers=headers, timeout=self.timeout
            )
        except BaseException as exc:  # the server died or cut us off: that is the point
            self.error = exc
        finally:
            self.reached.set()
            self.done.set()

    def begin(self) -> StreamingPatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """End a stall early."""
        self._wake.set()

    def join(self, timeout: float = 60.0) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the streaming PATCH did not end"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class RawPatch:
    """A PATCH over a bare socket, so a test controls exactly when body bytes go out.

    Unlike an HTTP client it can stop sending in the middle of a body and still read
    whatever the server answers meanwhile.
    """

    def __init__(
        self,
        server: GatewayProcess,
        url: str,
        offset: int,
        length: int,
        extra: dict[str, str] | None = None,
    ) -> None:
        path = "/" + url.split("/", 3)[3]
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        headers = {
            **patch_headers(server, offset, **(extra or {})),
            "Host": f"127.0.0.1:{server.port}",
            "Content-Length": str(length),
        }
        head = f"PATCH {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall(head.encode("latin-1") + b"\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, timeout: float) -> RawResponse:
        """The response, read until its body ends or the server closes the connection."""
        self.sock.settimeout(timeout)
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = self.sock.recv(65536)
            if not piece:
                raise ConnectionError(f"closed before a response: {buf!r}")
            buf += piece
        raw_head, body = buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            piece = self.sock.recv(65536)
            if not piece:
                break
            body += piece
        return RawResponse(status, headers, body)

    def answered(self, timeout: float) -> bool:
        """True once the server has sent something (a response, or its close)."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def closed_by_server(self, timeout: float) -> bool:
        """True once the server has closed its side (recv returns EOF or a reset)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


# -- finished uploads, their manifests and the stored objects -----------------------------


def send(
    server: GatewayProcess, url: str, data: bytes, offset: int, sizes: list[int] | None = None
) -> int:
    """PATCH data[offset:] in pieces of `sizes` (default: one); return the new offset."""
    for size in sizes if sizes is not None else [len(data) - offset]:
        response = patch(server, url, data[offset : offset + size], offset)
        assert response.status_code == 204, response.text
        offset += size
        assert response.headers["Upload-Offset"] == str(offset)
    return offset


def upload(
    server: GatewayProcess, data: bytes, sizes: list[int] | None = None, **headers: str
) -> str:
    """Create an upload of len(data) bytes, send all of it; return its absolute URL."""
    url = create(server, len(data), **headers)
    if data:
        assert send(server, url, data, 0, sizes) == len(data)
    assert head_offset(server, url) == len(data)
    return url


def segment_size(server: GatewayProcess) -> int:
    """The segment size the server seals with (set by the test, or raised for S3)."""
    return int(server.env.get("GATEWAY_SEGMENT_SIZE", 8 << 20))


def manifest_json(server: GatewayProcess, uid: str) -> dict[str, Any]:
    """GET /files/{id}/manifest as JSON."""
    response = httpx.get(
        f"{server.files_url}{uid}/manifest",
        headers={**server.auth, "Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def flip_stored_byte(data_dir: Path, key: str, offset: int) -> None:
    """XOR one byte of a stored object with 0x01 (offset < 0 counts from the end)."""
    store = store_for(data_dir)
    blob = bytearray(store.get(key))
    blob[offset] ^= 0x01
    store.put(key, bytes(blob))


# -- the catalog's files ---------------------------------------------------------------

CATALOG_FILES = ("catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm")


def catalog_files_holding(data_dir: Path, secret: bytes) -> list[str]:
    """Which of the catalog's files contain `secret`. Read by another process: closing
    a descriptor of the database here would drop this process's SQLite locks on it."""
    found = []
    for name in CATALOG_FILES:
        if (data_dir / name).exists():
            raw = subprocess.run(["cat", str(data_dir / name)], capture_output=True, check=True)
            if secret in raw.stdout:
                found.append(name)
    return found
