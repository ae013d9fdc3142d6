"""Helpers for the tus HTTP tests: requests to a gateway and the checks on its answers.

Free functions (`create`, `patch`, `head_offset`, `upload`) drive a server in a few
calls; `Tus` is a client whose every response is checked for the rule that holds on all
of them: `Tus-Resumable: 1.0.0` on every response except OPTIONS. What httpx would not
send (exact request bytes, bodies paced or cut midway) is in rawhttp.py.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import crc32c
import httpx
import pytest

from tests.server import GatewayProcess, store_for

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


class Gateway(Protocol):
    """What a test talks to: a GatewayProcess, or an app in this process (inprocess.py)."""

    @property
    def url(self) -> str: ...
    @property
    def files_url(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def auth(self) -> dict[str, str]: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def port(self) -> int: ...


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


def error_code(response: httpx.Response) -> str | None:
    if response.headers.get("content-type") != PROBLEM:
        return None
    code = response.json().get("code")
    return str(code) if code is not None else None


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


# -- requests ----------------------------------------------------------------------------


def creation_headers(length: int | None, metadata: str | None = None) -> dict[str, str]:
    """Upload-Length, or Upload-Defer-Length when `length` is None; Upload-Metadata."""
    h = {"Upload-Defer-Length": "1"} if length is None else {"Upload-Length": str(length)}
    if metadata is not None:
        h["Upload-Metadata"] = metadata
    return h


def create(server: GatewayProcess, length: int | None, **headers: str) -> str:
    """A new upload's absolute URL; `length` None defers the length."""
    h = {**server.auth, **creation_headers(length), **headers}
    response = httpx.post(server.files_url, headers=h, timeout=30)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def patch_headers(server: Gateway, offset: int, **extra: str) -> dict[str, str]:
    return {**server.auth, "Content-Type": OCTET, "Upload-Offset": str(offset), **extra}


def patch(server: GatewayProcess, url: str, data: bytes, offset: int) -> httpx.Response:
    return httpx.patch(url, content=data, headers=patch_headers(server, offset), timeout=60)


def head_offset(server: GatewayProcess, url: str) -> int:
    response = httpx.head(url, headers=server.auth, timeout=30)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])


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


@dataclass
class Tus:
    """A tus client for one server, over a checking httpx client."""

    server: Gateway
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
        response = self.post({**creation_headers(length, metadata), **(headers or {})})
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
        h = {**patch_headers(self.server, offset), **(headers or {})}
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


# -- what the gateway left at rest ----------------------------------------------------


def object_dirs(data_dir: Path) -> set[str]:
    """The upload folders in the object store (one per upload that holds objects)."""
    objects = data_dir / "objects"
    return {p.name for p in objects.iterdir()} if objects.is_dir() else set()


def tree(root: Path) -> set[str]:
    """Every path under root, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def flip_stored_byte(data_dir: Path, key: str, offset: int) -> None:
    """XOR one byte of a stored object with 0x01 (offset < 0 counts from the end)."""
    store = store_for(data_dir)
    blob = bytearray(store.get(key))
    blob[offset] ^= 0x01
    store.put(key, bytes(blob))


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
