"""Helpers for the black-box tus HTTP tests: a checking client, problem+json asserts, raw HTTP.

Every response that passes through `tus_client` is checked for the rule that holds
on all of them: `Tus-Resumable: 1.0.0` on every response except OPTIONS.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import socket
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import crc32c
import httpx
import pytest

from tests.server import GatewayProcess

TUS_VERSION = "1.0.0"
OCTET = "application/offset+octet-stream"
PROBLEM = "application/problem+json"
# RFC 9110 section 5.6.7 IMF-fixdate, the one HTTP-date format a server may generate.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# An id of the right shape that the server never minted.
UNKNOWN_ID = "Zz" * 11


def effective_method(request: httpx.Request) -> str:
    return str(request.headers.get("X-HTTP-Method-Override", request.method)).strip().upper()


def check_tus_resumable(response: httpx.Response) -> None:
    """httpx response hook: Tus-Resumable on every response but OPTIONS."""
    if effective_method(response.request) == "OPTIONS":
        assert "Tus-Resumable" not in response.headers, response.headers
    else:
        assert response.headers.get("Tus-Resumable") == TUS_VERSION, (
            response.request.method,
            response.request.url,
            response.status_code,
            response.headers,
        )


def tus_client(headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        headers=headers or {}, timeout=30, event_hooks={"response": [check_tus_resumable]}
    )


def start_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str] | None = None
) -> GatewayProcess:
    return GatewayProcess(tmp_path_factory.mktemp(name) / "data", env=env or {}).start()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """A problem+json error with this status and stable code (the body is empty on HEAD)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type") == PROBLEM, response.headers
    if response.request.method == "HEAD":
        return {}
    body = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert body["type"] == f"urn:imaging-gateway:error:{code}", body
    assert isinstance(body["detail"], str) and body["detail"], body
    return dict(body)


def assert_http_date(value: str, *, near: float, slack: float = 120.0) -> None:
    """An RFC 9110 IMF-fixdate within `slack` seconds of the Unix time `near`."""
    assert IMF_FIXDATE.fullmatch(value), value
    ts = email.utils.parsedate_to_datetime(value).timestamp()
    assert abs(ts - near) <= slack, (value, near)


def upload_id(url: str) -> str:
    uid = url.rsplit("/", 1)[1]
    assert UPLOAD_ID.fullmatch(uid), url
    return uid


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "crc32c":
        return int(crc32c.crc32c(data)).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def checksum_header(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {b64(digest(algorithm, data))}"


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends it with Transfer-Encoding: chunked."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def object_dirs(data_dir: Path) -> set[str]:
    """The upload folders in the object store (one per upload that holds objects)."""
    objects = data_dir / "objects"
    return {p.name for p in objects.iterdir()} if objects.is_dir() else set()


def tree(root: Path) -> set[str]:
    """Every path under root, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass
class Tus:
    """A tus client for one server, over a checking httpx client."""

    server: GatewayProcess
    client: httpx.Client

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def url(self, path: str) -> str:
        return self.server.url + path

    def post(self, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
        return self.client.post(
            self.server.files_url,
            headers={**self.server.auth, **(headers or {})},
            **kwargs,  # type: ignore[arg-type]
        )

    def create(
        self,
        length: int | None,
        *,
        metadata: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """A new upload; length None defers it. Returns its absolute URL."""
        h = dict(headers or {})
        if length is None:
            h["Upload-Defer-Length"] = "1"
        else:
            h["Upload-Length"] = str(length)
        if metadata is not None:
            h["Upload-Metadata"] = metadata
        response = self.post(h)
        assert response.status_code == 201, response.text
        return response.headers["Location"]

    def head(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.head(url, headers={**self.server.auth, **(headers or {})})

    def offset(self, url: str) -> int:
        response = self.head(url)
        assert response.status_code == 200, response.headers
        return int(response.headers["Upload-Offset"])

    def patch(
        self,
        url: str,
        data: bytes | Iterable[bytes],
        offset: int,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        h = {**self.server.auth, "Content-Type": OCTET, "Upload-Offset": str(offset)}
        h.update(headers or {})
        return self.client.patch(url, content=data, headers=h)

    def delete(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.delete(url, headers={**self.server.auth, **(headers or {})})

    def upload(self, data: bytes, chunks: Iterable[int] | None = None, **create: object) -> str:
        """Create an upload of len(data) bytes and send it in chunks of the given sizes."""
        url = self.create(len(data), **create)  # type: ignore[arg-type]
        self.send(url, data, 0, chunks)
        return url

    def started(self, data: bytes, done: int, **create: object) -> str:
        """Create an upload of len(data) bytes with only the first `done` of them sent."""
        url = self.create(len(data), **create)  # type: ignore[arg-type]
        if done:
            self.send(url, data[:done], 0, None)
        return url

    def send(self, url: str, data: bytes, offset: int, chunks: Iterable[int] | None) -> None:
        sizes = list(chunks) if chunks is not None else [len(data)]
        pos = 0
        for size in sizes:
            piece = data[pos : pos + size]
            response = self.patch(url, piece, offset + pos)
            assert response.status_code == 204, response.text
            pos += len(piece)
            assert response.headers["Upload-Offset"] == str(offset + pos)
        assert pos == len(data), "chunk sizes must add up to the data"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last line wins
    body: bytes
    elapsed: float


def raw_request(
    port: int,
    head: bytes,
    body: bytes = b"",
    *,
    timeout: float = 10.0,
) -> RawResponse:
    """Send exactly these request bytes (start line + headers + CRLF) and read one response.

    For what httpx would normalise away: dot segments, percent escapes in the path,
    a Content-Length that the body does not match.
    """
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        # A response to HEAD announces a Content-Length but carries no body.
        size = 0 if head.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return RawResponse(status, headers, rest[:size], time.monotonic() - start)


def request_head(method: str, target: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
