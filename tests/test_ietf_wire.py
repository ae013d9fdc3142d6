"""IETF resumable uploads against a real `gateway serve`: interrupted, then resumed.

The drafts' example 1 over a bare socket, for every interop version served: a request
carrying the whole representation is cut off midway (the client closes its
connection), the client retrieves the offset with HEAD and appends the rest with
PATCH; what is stored is exactly what was meant to be sent. The request cut off is an
append: a creation cut off cannot be resumed here, since the client learns the upload's
URL from a 104 interim response only, sent with GATEWAY_IETF_SEND_104 (off here; see
tests/test_ietf_informational.py).
"""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from gateway.catalog.sqlite import SQLiteCatalog
from gateway.ietf import headers as fields
from gateway.ietf.versions import SUPPORTED, VERSIONS, Version
from tests.conftest import read_stored
from tests.rawhttp import StreamingPatch, raw_request, request_head
from tests.server import GatewayProcess
from tests.tushttp import upload_id

KiB = 1 << 10
DATA = os.urandom(1024 * KiB + 17)
CUT = 600 * KiB  # the bytes sent before the connection is closed


def _headers(server: GatewayProcess, version: Version, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {server.token}",
        fields.INTEROP_HEADER: str(version.number),
        **extra,
    }


def _send_and_hang_up(server: GatewayProcess, method: str, path: str, head: dict[str, str]) -> None:
    """Announce all of DATA (or what is left of it), send up to CUT, then close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request_head(method, path, server.port, head))
        sock.sendall(DATA[: CUT - int(head.get("Upload-Offset", "0"))])
        time.sleep(0.2)  # let the server take the bytes before the connection goes


def _offset_after_interruption(
    server: GatewayProcess, version: Version, url: str, client: httpx.Client
) -> int:
    """Offset retrieval, as the client does after the interruption: every byte it sent
    arrived before the close, so the upload holds them all once the server saw the
    close (HEAD asks a writer whose body went silent to save and let go)."""
    deadline = time.monotonic() + 10
    while True:
        response = client.head(url, headers=_headers(server, version))
        assert response.status_code == 204, response.text
        assert response.headers["Cache-Control"] == "no-store"
        offset = int(response.headers["Upload-Offset"])
        name = fields.complete_field_name(version)
        assert fields.parse_complete(version, [response.headers[name]]) is False
        if offset == CUT or time.monotonic() > deadline:
            return offset
        time.sleep(0.1)


def _resume(server: GatewayProcess, version: Version, url: str, offset: int) -> httpx.Response:
    extra = {"Upload-Offset": str(offset), **fields.complete_field(version, True)}
    if version.partial_upload_type:
        extra["Content-Type"] = fields.PARTIAL_UPLOAD
    return httpx.patch(
        url, headers=_headers(server, version, **extra), content=DATA[offset:], timeout=30
    )


@pytest.mark.parametrize("number", SUPPORTED, ids=lambda n: f"v{n}")
def test_an_interrupted_upload_is_resumed(server: GatewayProcess, number: int) -> None:
    version = VERSIONS[number]
    # The URL first, from an empty creation (the drafts' "create an upload resource URL
    # before transferring data"), then all the content in one append, cut off.
    created = raw_request(
        server.port,
        request_head(
            "POST",
            "/files/",
            server.port,
            _headers(
                server,
                version,
                **fields.complete_field(version, False),
                **{"Upload-Length": str(len(DATA)), "Content-Length": "0"},
            ),
        ),
    )
    assert created.status == 201, created.body
    url = created.headers["location"]
    path = "/" + url.split("/", 3)[3]
    extra = {"Upload-Offset": "0", "Content-Length": str(len(DATA))}
    extra.update(fields.complete_field(version, True))
    if version.partial_upload_type:
        extra["Content-Type"] = fields.PARTIAL_UPLOAD
    _send_and_hang_up(server, "PATCH", path, _headers(server, version, **extra))

    with httpx.Client(timeout=30) as client:
        offset = _offset_after_interruption(server, version, url, client)
    assert offset == CUT

    response = _resume(server, version, url, offset)
    assert response.status_code == version.append_status, response.text
    assert response.headers["Upload-Offset"] == str(len(DATA))
    assert read_stored(server.data_dir, upload_id(url)) == DATA


@pytest.mark.parametrize("number", SUPPORTED, ids=lambda n: f"v{n}")
def test_a_creation_cut_off_midway_stays_unfinished(server: GatewayProcess, number: int) -> None:
    """The creation carrying everything is cut off. Without a 104 the client never got
    its URL; the upload, whose length the request stated, stays unfinished (it expires)."""
    version = VERSIONS[number]
    extra = {"Content-Length": str(len(DATA)), **fields.complete_field(version, True)}
    before = _open_uploads(server)
    _send_and_hang_up(server, "POST", "/files/", _headers(server, version, **extra))
    deadline = time.monotonic() + 10
    while _open_uploads(server) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_uploads(server) == (before[0] + 1, before[1] + len(DATA))


def test_offset_retrieval_stops_an_append_still_receiving(server: GatewayProcess) -> None:
    """Unlike tus's HEAD, which leaves a PATCH whose bytes still flow alone, offset
    retrieval stops it (it saves what came): the drafts' client asks only once it gave
    up on that request, and its next append must be accepted at the offset answered."""
    version = VERSIONS[8]
    data = os.urandom(256 * KiB)
    url = httpx.post(
        server.files_url,
        headers=_headers(server, version, **fields.complete_field(version, False)),
        timeout=30,
    ).headers["Location"]
    extra = _headers(server, version, **fields.complete_field(version, True))
    extra["Content-Type"] = fields.PARTIAL_UPLOAD
    sending = StreamingPatch(
        server, url, data, 0, slow_after=128 * KiB, chunk=8 * KiB, pause=0.1, extra=extra
    ).begin()
    assert sending.reached.wait(30)
    with httpx.Client(timeout=30) as client:
        head = client.head(url, headers=_headers(server, version))
    assert head.status_code == 204, head.text
    offset = int(head.headers["Upload-Offset"])
    assert 128 * KiB <= offset < len(data)
    sending.join()
    if sending.response is not None:  # else the connection was cut: also a refusal
        assert sending.response.status_code == 400, sending.response.text
    response = httpx.patch(
        url,
        headers={**extra, "Upload-Offset": str(offset)},
        content=data[offset:],
        timeout=30,
    )
    assert response.status_code == 204, response.text
    assert read_stored(server.data_dir, upload_id(url)) == data


def test_no_informational_response_comes_first(server: GatewayProcess) -> None:
    """uvicorn has no way for an app to send 1xx: the first status line is the final one
    (docs/DESIGN.md, "IETF resumable uploads")."""
    version = VERSIONS[8]
    head = request_head(
        "POST",
        "/files/",
        server.port,
        _headers(
            server, version, **fields.complete_field(version, True), **{"Content-Length": "3"}
        ),
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"abc")
        first = sock.recv(65536).split(b"\r\n", 1)[0]
    assert first == b"HTTP/1.1 201 Created"


def _open_uploads(server: GatewayProcess) -> tuple[int, int]:
    """How many of the token's uploads are unfinished, and their lengths' sum."""
    catalog = SQLiteCatalog(server.data_dir / "catalog.sqlite3")
    try:
        return catalog.open_uploads("admin", "default")
    finally:
        catalog.close()
