"""`104 Upload Resumption Supported` on IETF upload creation (GATEWAY_IETF_SEND_104).

Over bare sockets against a real `gateway serve`: the 104 arrives with the upload's
URL before any body byte is sent, then the final response; a creation cut off midway
is resumed at the URL the 104 gave (what URLSession does); HTTP/1.0 clients, tus
requests and a gateway without the setting get no 104. Then the protocol's
`http.response.informational` messages on a fake connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.connections import INFORMATIONAL, _send_informational, _with_informational
from gateway.ietf import headers as fields
from gateway.ietf.versions import SUPPORTED, VERSIONS, Version
from tests.conftest import read_stored
from tests.server import GatewayProcess
from tests.tushttp import upload_id

SERVER_ENV = {"GATEWAY_IETF_SEND_104": "true"}
KiB = 1 << 10
DATA = os.urandom(512 * KiB + 5)
CUT = 200 * KiB


@dataclass
class Head:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names


class Connection:
    """One client connection: request heads and bodies sent when the test says, and
    response heads read one at a time (so an interim response is seen as such)."""

    def __init__(self, server: GatewayProcess, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def head(self) -> Head:
        while b"\r\n\r\n" not in self.buf:
            piece = self.sock.recv(65536)
            if not piece:
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
            self.buf += piece
        top, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        _, status, reason = status_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Head(int(status), reason, headers)

    def nothing_for(self, seconds: float) -> bool:
        """True if no byte arrives within `seconds`."""
        if self.buf:
            return False
        self.sock.settimeout(seconds)
        try:
            self.buf += self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(30)
        return not self.buf

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connection(server: GatewayProcess) -> Iterator[Connection]:
    conn = Connection(server)
    yield conn
    conn.close()


def creation(
    server: GatewayProcess,
    version: Version,
    size: int,
    *,
    complete: bool = True,
    http: str = "HTTP/1.1",
    extra: dict[str, str] | None = None,
) -> bytes:
    head = {
        "Host": f"127.0.0.1:{server.port}",
        "Authorization": f"Bearer {server.token}",
        fields.INTEROP_HEADER: str(version.number),
        **fields.complete_field(version, complete),
        "Content-Length": str(size),
        **(extra or {}),
    }
    lines = [f"POST /files/ {http}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _resumption_supported(head: Head, server: GatewayProcess, version: Version) -> str:
    assert (head.status, head.reason) == (104, "Upload Resumption Supported")
    assert head.headers["upload-draft-interop-version"] == str(version.number)
    url = head.headers["location"]
    assert url.startswith(server.files_url)
    assert set(head.headers) == {"upload-draft-interop-version", "location"}
    return url


@pytest.mark.parametrize("number", SUPPORTED, ids=lambda n: f"v{n}")
def test_creation_sends_104_before_reading_the_body(
    server: GatewayProcess, connection: Connection, number: int
) -> None:
    version = VERSIONS[number]
    connection.send(creation(server, version, len(DATA)))
    # No body byte sent yet: the 104 comes first, with the upload's URL.
    url = _resumption_supported(connection.head(), server, version)
    connection.send(DATA)
    final = connection.head()
    assert final.status == 201
    assert final.headers["location"] == url
    assert final.headers["upload-offset"] == str(len(DATA))
    assert read_stored(server.data_dir, upload_id(url)) == DATA


@pytest.mark.parametrize("number", SUPPORTED, ids=lambda n: f"v{n}")
def test_a_creation_cut_off_midway_is_resumed_at_the_104s_url(
    server: GatewayProcess, number: int
) -> None:
    """URLSession's resumption: the creation carrying everything is cut off; the URL
    from the 104 answers the offset (HEAD), and an append sends the rest (PATCH)."""
    version = VERSIONS[number]
    conn = Connection(server)
    conn.send(creation(server, version, len(DATA)))
    url = _resumption_supported(conn.head(), server, version)
    conn.send(DATA[:CUT])
    time.sleep(0.2)  # let the server take the bytes before the connection goes
    conn.close()

    auth = {"Authorization": f"Bearer {server.token}", fields.INTEROP_HEADER: str(number)}
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 10
        while True:
            got = client.head(url, headers=auth)
            assert got.status_code == 204, got.text
            offset = int(got.headers["Upload-Offset"])
            if offset == CUT or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert offset == CUT
        extra = {"Upload-Offset": str(offset), **fields.complete_field(version, True)}
        if version.partial_upload_type:
            extra["Content-Type"] = fields.PARTIAL_UPLOAD
        done = client.patch(url, headers={**auth, **extra}, content=DATA[offset:])
    assert done.status_code == version.append_status, done.text
    assert done.headers["Upload-Offset"] == str(len(DATA))
    assert read_stored(server.data_dir, upload_id(url)) == DATA


def test_an_empty_creation_gets_a_104_too(server: GatewayProcess, connection: Connection) -> None:
    version = VERSIONS[3]  # URLSession creates with Upload-Incomplete: ?1 when it streams
    connection.send(creation(server, version, 0, complete=False))
    url = _resumption_supported(connection.head(), server, version)
    final = connection.head()
    assert (final.status, final.headers["location"]) == (201, url)


def test_104_comes_before_100_continue(server: GatewayProcess, connection: Connection) -> None:
    """A client that asked `Expect: 100-continue` (curl, for large bodies) gets the 104
    as soon as the upload exists and `100 Continue` once the body is wanted."""
    version = VERSIONS[8]
    connection.send(creation(server, version, len(DATA), extra={"Expect": "100-continue"}))
    url = _resumption_supported(connection.head(), server, version)
    assert connection.head().status == 100
    connection.send(DATA)
    final = connection.head()
    assert (final.status, final.headers["location"]) == (201, url)


def test_http_1_0_gets_no_104(server: GatewayProcess, connection: Connection) -> None:
    """RFC 9110 15.2: no 1xx to an HTTP/1.0 client."""
    version = VERSIONS[8]
    connection.send(creation(server, version, len(DATA), http="HTTP/1.0"))
    assert connection.nothing_for(0.5)
    connection.send(DATA)
    assert connection.head().status == 201


def test_tus_creation_gets_no_104(server: GatewayProcess, connection: Connection) -> None:
    head = (
        f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.token}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Length: {len(DATA)}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(DATA)}\r\n\r\n"
    )
    connection.send(head.encode())
    assert connection.nothing_for(0.5)
    connection.send(DATA)
    final = connection.head()
    assert final.status == 201
    assert final.headers["upload-offset"] == str(len(DATA))


def test_appends_get_no_104(server: GatewayProcess, connection: Connection) -> None:
    version = VERSIONS[8]
    connection.send(creation(server, version, 0, complete=False))
    url = _resumption_supported(connection.head(), server, version)
    assert connection.head().status == 201
    path = "/" + url.split("/", 3)[3]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.token}\r\nUpload-Draft-Interop-Version: 8\r\n"
        f"Upload-Offset: 0\r\nUpload-Complete: ?1\r\n"
        f"Content-Type: application/partial-upload\r\nContent-Length: {len(DATA)}\r\n\r\n"
    )
    connection.send(head.encode())
    assert connection.nothing_for(0.5)
    connection.send(DATA)
    assert connection.head().status == 204


def test_without_the_setting_no_104_is_sent(tmp_path: Path) -> None:
    server = GatewayProcess(tmp_path / "data").start()
    try:
        conn = Connection(server)
        try:
            version = VERSIONS[3]
            conn.send(creation(server, version, len(DATA)))
            assert conn.nothing_for(0.5)
            conn.send(DATA)
            final = conn.head()
            assert final.status == 201
            assert read_stored(server.data_dir, upload_id(final.headers["location"])) == DATA
        finally:
            conn.close()
    finally:
        server.stop()


# -- the protocol's informational messages, on a fake connection -----------------------


@dataclass
class _Transport:
    written: list[bytes] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


@dataclass
class _Flow:
    write_paused: bool = False


@dataclass
class _Cycle:
    transport: _Transport = field(default_factory=_Transport)
    flow: _Flow = field(default_factory=_Flow)
    response_started: bool = False
    disconnected: bool = False


def _informational(cycle: _Cycle, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    asyncio.run(_send_informational(cast(RequestResponseCycle, cycle), status, headers))


def test_an_informational_response_is_written_as_it_is() -> None:
    cycle = _Cycle()
    _informational(cycle, 104, [(b"Upload-Draft-Interop-Version", b"8"), (b"location", b"/x")])
    assert cycle.transport.written == [
        b"HTTP/1.1 104 Upload Resumption Supported\r\n"
        b"upload-draft-interop-version: 8\r\nlocation: /x\r\n\r\n"
    ]
    _informational(cycle, 103, [])
    assert cycle.transport.written[1] == b"HTTP/1.1 103 Early Hints\r\n\r\n"


@pytest.mark.parametrize("status", [99, 101, 200, 204])
def test_only_1xx_but_101_is_informational(status: int) -> None:
    with pytest.raises(RuntimeError, match="not an informational status"):
        _informational(_Cycle(), status, [])


def test_no_informational_response_once_the_final_one_started() -> None:
    with pytest.raises(RuntimeError, match="after the final one"):
        _informational(_Cycle(response_started=True), 104, [])


def test_nothing_is_written_to_a_client_gone() -> None:
    cycle = _Cycle(disconnected=True)
    _informational(cycle, 104, [])
    assert cycle.transport.written == []


def test_a_bad_header_is_refused() -> None:
    with pytest.raises(RuntimeError, match="invalid header"):
        _informational(_Cycle(), 104, [(b"location", b"/x\r\nset-cookie: a=b")])


def test_the_app_s_other_messages_reach_uvicorn() -> None:
    cycle = _Cycle()
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": INFORMATIONAL, "status": 104, "headers": []})
        await send({"type": "http.response.start", "status": 201, "headers": []})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    real = cast(RequestResponseCycle, cycle)
    asyncio.run(_with_informational(app, real, cast(Any, {}), receive, send))
    assert cycle.transport.written == [b"HTTP/1.1 104 Upload Resumption Supported\r\n\r\n"]
    assert [m["type"] for m in sent] == ["http.response.start"]
