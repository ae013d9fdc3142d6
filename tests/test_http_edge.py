"""The HTTP edge, black-box: bounded headers and their deadline, Host and Location,
transfer codings, and error answers that reach a client still sending its body.

Most requests go over raw sockets: httpx would refuse to send them, or would hide
what the server did with the connection.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.rawhttp import RawResponse, raw_request, request_head
from tests.server import GatewayProcess
from tests.test_observability import wait_for_access
from tests.tushttp import (
    OCTET,
    PROBLEM,
    UNKNOWN_ID,
    Tus,
    assert_problem,
    b64,
    tus_client,
    upload_id,
)

MiB = 1 << 20
HEADER_TIMEOUT = 2.0
LINGER_TIMEOUT = 3.0


SERVER_ENV = {  # for the module's `server` (conftest.py)
    "GATEWAY_PUBLIC_URL": "",  # the default: relative Location
    "GATEWAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "GATEWAY_LINGER_TIMEOUT": str(LINGER_TIMEOUT),
}


def _create(tus: Tus, length: int) -> str:
    """A new upload's absolute URL (the server answers a relative Location)."""
    response = tus.post({"Upload-Length": str(length)})
    assert response.status_code == 201, response.text
    return tus.url(response.headers["Location"])


def _read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """One response from a socket the test wrote to itself."""
    sock.settimeout(timeout)
    start = time.monotonic()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response after {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(int(lines[0].split(" ")[1]), headers, rest[:size], time.monotonic() - start)


def _problem_code(response: RawResponse) -> str:
    assert response.headers["content-type"] == PROBLEM, response.headers
    return str(json.loads(response.body)["code"])


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes (FIN or reset) within `timeout`, reading whatever comes."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# -- header size and deadline ------------------------------------------------------------


def test_an_endless_header_line_is_431(server: GatewayProcess) -> None:
    """One header line that never ends must not be buffered: 431 after 64 KiB, then close."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
        for _ in range(16):  # 1 MiB, no CRLF
            sock.sendall(b"a" * 65536)
        response = _read_response(sock)
        assert response.status == 431
        assert _problem_code(response) == "ERR_HEADERS_TOO_LARGE"
        assert response.headers["connection"] == "close"
        assert response.headers["tus-resumable"] == "1.0.0"
        assert _closed_by_server(sock, LINGER_TIMEOUT + 5)


def test_too_many_header_lines_is_431(server: GatewayProcess) -> None:
    lines = "".join(f"X-Line-{i}: v\r\n" for i in range(300))
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode()
    response = raw_request(server.port, head)
    assert response.status == 431
    assert _problem_code(response) == "ERR_HEADERS_TOO_LARGE"


def test_large_headers_under_the_limit_are_served(tus: Tus) -> None:
    """60 KiB of headers, and a PATCH whose headers and first 200 KiB of body come in one write."""
    head = request_head("GET", "/healthz", tus.server.port, {"X-Pad": "p" * 60_000})
    assert raw_request(tus.server.port, head).status == 200
    data = b"d" * (200 * 1024)
    url = _create(tus, len(data))
    headers = {
        **tus.server.auth,
        "Content-Type": OCTET,
        "Upload-Offset": "0",
        "Content-Length": str(len(data)),
    }
    head = request_head("PATCH", "/files/" + upload_id(url), tus.server.port, headers)
    response = raw_request(tus.server.port, head, data)
    assert response.status == 204, response.body
    assert tus.offset(url) == len(data)


def test_headers_that_trickle_in_too_slowly_get_408(server: GatewayProcess) -> None:
    """The deadline runs from the request's first byte; more bytes do not extend it."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(0.5)
        response = None
        for i in range(40):
            try:
                sock.sendall(f"X-Drip-{i}: v\r\n".encode())
            except OSError:
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    response = _read_response(sock)
                    break
            except TimeoutError:
                continue
        assert response is not None, "no answer to headers that never end"
        assert response.status == 408
        assert _problem_code(response) == "ERR_HEADER_TIMEOUT"
        assert time.monotonic() - start < HEADER_TIMEOUT + 3


def test_a_connection_that_sends_nothing_is_closed(server: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        start = time.monotonic()
        assert _closed_by_server(sock, HEADER_TIMEOUT + 5)
        assert time.monotonic() - start >= HEADER_TIMEOUT - 0.5


def test_endless_chunked_trailers_are_cut(tus: Tus) -> None:
    url = _create(tus, 10)
    headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": "0"}
    headers["Transfer-Encoding"] = "chunked"
    head = request_head("PATCH", "/files/" + upload_id(url), tus.server.port, headers)
    with socket.create_connection(("127.0.0.1", tus.server.port)) as sock:
        sock.sendall(head + b"3\r\nabc\r\n0\r\nX-Trailer: ")
        sock.settimeout(10)
        try:
            for _ in range(32):  # 2 MiB of one trailer line
                sock.sendall(b"t" * 65536)
        except OSError:
            pass  # closed already: what we want
        assert _closed_by_server(sock, LINGER_TIMEOUT + 5)
    assert tus.offset(url) in (0, 3)  # what arrived may be kept; nothing else


def test_chunked_trailer_fields_are_not_request_headers(tus: Tus) -> None:
    # Sent in one piece, the trailer is parsed before the app reads the request; a
    # field there must not count as a header (here: a wrong checksum, or a method).
    url = _create(tus, 10)
    headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": "0"}
    headers["Transfer-Encoding"] = "chunked"
    head = request_head("PATCH", "/files/" + upload_id(url), tus.server.port, headers)
    trailer = b"Upload-Checksum: sha1 " + b64(b"x" * 20).encode() + b"\r\n"
    trailer += b"X-HTTP-Method-Override: DELETE\r\n"
    response = raw_request(tus.server.port, head, b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n")
    assert response.status == 204, response.body
    assert tus.offset(url) == 3


# -- Host and Location -------------------------------------------------------------------


def test_location_is_relative_whatever_host_says(tus: Tus) -> None:
    spoofed = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil2.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "host=evil3.example;proto=https",
    }
    response = tus.post({"Upload-Length": "5", **spoofed})
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location == "/files/" + upload_id(location)
    assert tus.offset(tus.url(location)) == 0


def test_location_is_built_on_the_public_url(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    server = gateway_factory(GATEWAY_PUBLIC_URL="https://uploads.example.org")
    response = httpx.post(
        server.files_url,
        headers={**server.auth, "Upload-Length": "5", "Host": "evil.example"},
    )
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    assert location == "https://uploads.example.org/files/" + upload_id(location)


@pytest.mark.parametrize(
    "host_lines",
    [[], ["127.0.0.1", "evil.example"], ["127.0.0.1", "127.0.0.1"], ["evil.example/x"], [""]],
    ids=["missing", "two", "two-same", "with-path", "empty"],
)
def test_host_must_be_one_valid_line(tus: Tus, host_lines: list[str]) -> None:
    lines = ["POST /files/ HTTP/1.1", *(f"Host: {h}" for h in host_lines)]
    lines += [f"{k}: {v}" for k, v in tus.server.auth.items()] + ["Upload-Length: 5"]
    response = raw_request(tus.server.port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert response.status == 400
    assert _problem_code(response) == "ERR_INVALID_HOST"
    assert "location" not in response.headers


def test_http_1_0_needs_no_host(server: GatewayProcess) -> None:
    response = raw_request(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert response.status == 200


# -- transfer codings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "status", "code"),
    [
        ("gzip, chunked", 501, "ERR_UNSUPPORTED_TRANSFER_CODING"),
        ("deflate,chunked", 501, "ERR_UNSUPPORTED_TRANSFER_CODING"),
        ("gzip", 501, "ERR_UNSUPPORTED_TRANSFER_CODING"),
        ("chunked, gzip", 400, "ERR_MALFORMED_REQUEST"),
    ],
)
def test_transfer_codings_other_than_chunked_are_refused(
    tus: Tus, coding: str, status: int, code: str
) -> None:
    """A gzip-coded body would otherwise be stored still compressed, as if it were the file."""
    url = _create(tus, 1000)
    packed = gzip.compress(b"z" * 1000)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
    headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": "0"}
    headers["Transfer-Encoding"] = coding
    head = request_head("PATCH", "/files/" + upload_id(url), tus.server.port, headers)
    response = raw_request(tus.server.port, head, body)
    assert response.status == status, response.body
    assert _problem_code(response) == code
    assert tus.offset(url) == 0


# -- errors answered before the body: lingering close ------------------------------------

# Sends one PATCH with a body of the given size the way tus-js-client does under Node
# (http.request, body written in 64 KiB pieces) and prints {status} or {status, error}.
NODE_PATCH = r"""
"use strict";
const http = require("http");
const [url, token, contentType, offset, sizeArg] = process.argv.slice(2);
const size = Number(sizeArg);
const req = http.request(url, {
  method: "PATCH",
  headers: {
    "Tus-Resumable": "1.0.0",
    "Authorization": `Bearer ${token}`,
    "Content-Type": contentType,
    "Upload-Offset": offset,
    "Content-Length": String(size),
  },
});
let status = null;
req.on("response", (res) => {
  status = res.statusCode;
  res.resume();
  res.on("end", () => console.log(JSON.stringify({ status })));
});
req.on("error", (err) => console.log(JSON.stringify({ status, error: err.code || String(err) })));
const chunk = Buffer.alloc(64 * 1024, 120);
let sent = 0;
function pump() {
  while (sent < size) {
    const n = Math.min(chunk.length, size - sent);
    sent += n;
    if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      req.once("drain", pump);
      return;
    }
  }
  req.end();
}
pump();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("size", [5 * MiB, 32 * MiB], ids=["5MiB", "32MiB"])
@pytest.mark.parametrize("case", ["401", "404", "409", "415"])
def test_node_sees_the_status_of_a_refused_large_patch(
    tus: Tus, tmp_path: Path, case: str, size: int
) -> None:
    """Answered before its body is read, a PATCH from Node must get the status, not
    ECONNRESET or EPIPE (tus-js-client under Node and Electron sends this way)."""
    script = tmp_path / "patch.cjs"
    script.write_text(NODE_PATCH)
    url = _create(tus, 100 * MiB)
    token, content_type, offset = tus.server.token, OCTET, "0"
    if case == "401":
        token = "not-a-token"
    elif case == "404":
        url = tus.url("/files/" + UNKNOWN_ID)
    elif case == "409":
        offset = "7"
    else:
        content_type = "application/octet-stream"
    for _ in range(3):
        out = subprocess.run(
            ["node", str(script), url, token, content_type, offset, str(size)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"status": int(case)}, out
    if case != "404":
        assert tus.offset(url) == 0


def _refused_patch_head(server: GatewayProcess, length: int) -> bytes:
    headers = {
        "Tus-Resumable": "1.0.0",
        "Authorization": "Bearer not-a-token",
        "Content-Type": OCTET,
        "Upload-Offset": "0",
        "Content-Length": str(length),
    }
    return request_head("PATCH", "/files/" + UNKNOWN_ID, server.port, headers)


def test_a_refused_body_is_drained_then_the_connection_closes_cleanly(
    server: GatewayProcess,
) -> None:
    body = b"x" * (4 * MiB)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_refused_patch_head(server, len(body)))
        response = _read_response(sock)
        assert response.status == 401
        assert response.headers["connection"] == "close"
        sock.sendall(body)  # the server reads on: no reset while the body is sent
        sock.settimeout(5)
        assert sock.recv(1) == b""  # then an orderly close


def test_lingering_is_bounded_in_time(server: GatewayProcess) -> None:
    """A client that keeps trickling its refused body is cut at the linger timeout."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_refused_patch_head(server, 1 << 30))
        assert _read_response(sock).status == 401
        start = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(40):
                sock.sendall(b"x" * 1000)
                time.sleep(0.5)
        assert LINGER_TIMEOUT - 0.5 <= time.monotonic() - start <= LINGER_TIMEOUT + 3


def test_lingering_ends_when_the_client_goes_silent(server: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_refused_patch_head(server, 1 << 30))
        assert _read_response(sock).status == 401
        start = time.monotonic()
        assert _closed_by_server(sock, LINGER_TIMEOUT + 5)  # the client sends no more
        assert time.monotonic() - start < LINGER_TIMEOUT


def test_lingering_is_bounded_in_bytes(gateway_factory: Callable[..., GatewayProcess]) -> None:
    server = gateway_factory(GATEWAY_LINGER_MAX_BYTES=str(MiB))
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_refused_patch_head(server, 1 << 30))
        assert _read_response(sock).status == 401
        sock.settimeout(10)
        with pytest.raises(OSError):
            while sent < 256 * MiB:
                sock.sendall(b"x" * 65536)
                sent += 65536
    assert sent < 64 * MiB  # 1 MiB read and dropped, plus what the socket buffers held
    metrics = httpx.get(f"{server.url}/metrics", headers=server.auth).text
    assert 'gateway_lingering_closes_total{outcome="byte_limit"} 1.0' in metrics


def test_a_keep_alive_connection_survives_a_fully_read_error(tus: Tus) -> None:
    """An error after the whole body was read (offset mismatch on a 0-byte PATCH) keeps
    the connection: only unread bodies close it."""
    url = _create(tus, 10)
    with httpx.Client() as client:
        headers = {**tus.server.auth, "Content-Type": OCTET, "Upload-Offset": "5"}
        first = client.patch(url, headers=headers)
        assert_problem(first, 409, "ERR_MISMATCHED_OFFSET")
        assert first.headers.get("connection") != "close"
        assert client.head(url, headers=tus.server.auth).status_code == 200


# -- proxies and the access log ----------------------------------------------------------


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"], ids=["no-proxy", "local-proxy"])
def test_forwarded_headers_count_only_from_trusted_proxies(
    gateway_factory: Callable[..., GatewayProcess], trusted: str
) -> None:
    server = gateway_factory(GATEWAY_TRUSTED_PROXIES=trusted)
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "proxy-test"}
    assert httpx.get(f"{server.url}/healthz", headers=headers).status_code == 200
    line = wait_for_access(server, {"proxy-test"})["proxy-test"][0]
    assert line["client"] == ("203.0.113.7" if trusted else "127.0.0.1")


def test_the_access_log_names_the_effective_method(tus: Tus, server: GatewayProcess) -> None:
    url = _create(tus, 10)
    headers = {**tus.server.auth, "X-HTTP-Method-Override": "HEAD", "X-Request-ID": "ovr-test"}
    assert tus.client.post(url, headers=headers).status_code == 200
    line = wait_for_access(server, {"ovr-test"})["ovr-test"][0]
    assert (line["method"], line["wire_method"]) == ("HEAD", "POST")


def test_a_websocket_upgrade_is_not_taken(server: GatewayProcess) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    response = raw_request(server.port, request_head("GET", "/healthz", server.port, headers))
    assert response.status == 200  # answered as plain HTTP, never switched


def test_a_lingering_refusal_holds_no_writer_slot(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """With one writer slot, a refused PATCH whose client keeps sending its body must
    not keep another upload waiting."""
    server = gateway_factory(GATEWAY_MAX_WRITERS="1", GATEWAY_ACQUIRE_TIMEOUT="2")
    with tus_client() as client:
        tus = Tus(server, client)
        refused, other = tus.create(1 << 30), tus.create(3)
        headers = {
            **server.auth,
            "Content-Type": OCTET,
            "Upload-Offset": "5",  # wrong: 409 before the body is read
            "Content-Length": str(1 << 30),
        }
        head = request_head("PATCH", "/files/" + upload_id(refused), server.port, headers)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head + b"x" * 65536)
            assert _read_response(sock).status == 409
            sock.sendall(b"x" * 65536)  # still lingering: the server reads on
            response = tus.patch(other, b"abc", 0)
            assert response.status_code == 204, response.text


def _unhandled(server: GatewayProcess) -> list[str]:
    return [
        line
        for line in server.log().splitlines()
        if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line
    ]


def test_a_pipelined_request_whose_connection_went_away_answers_nowhere(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """A PATCH still being answered, a pipelined request after it, then bytes that are
    not HTTP: the garbage is refused at once and the client goes. The PATCH's answer,
    written after that, goes nowhere; it must not fail in the gateway (uvloop raises on
    a write to a closed transport, and the cycle of a request behind the newest one was
    never told its connection was lost)."""
    server = gateway_factory()
    with tus_client() as client:
        url = Tus(server, client).create(10)
    headers = {
        **server.auth,
        "Content-Type": OCTET,
        "Upload-Offset": "0",
        "Content-Length": "3",
        "X-Request-ID": "first",
    }
    head = request_head("PATCH", "/files/" + upload_id(url), server.port, headers)
    second = request_head("GET", "/healthz", server.port, {"X-Request-ID": "second"})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b"abc" + second + b"?0\r\nNOT HTTP\r\n\r\n")
        assert _read_response(sock).status == 400
    wait_for_access(server, {"first"})
    time.sleep(0.2)
    assert _unhandled(server) == []
