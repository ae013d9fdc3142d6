"""The HTTP protocol: chunks reach the app uncopied, or bodies are read straight into
its buffers; its limits reach worker processes.

Its behaviour on the wire is tested black-box in tests/test_http_edge.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import Receive as ASGIReceiveCallable
from starlette.types import Scope, Send

from gateway.config import Settings
from gateway.connections import MANY_CONNECTIONS, EdgeLimits, _append, protocol_factory
from gateway.middleware import BODY_INTO
from gateway.writer import WITHDRAWN
from tests.server import free_port


def test_a_chunk_with_nothing_before_it_is_passed_on_as_it_is() -> None:
    chunk = b"x" * 300_000
    assert _append(bytearray(), chunk) is chunk
    assert bytes(_append(b"", chunk)) is chunk  # what uvicorn's receive() hands the app


def test_chunks_that_arrive_before_the_app_reads_are_joined_in_order() -> None:
    first, second, third = b"a" * 70_000, b"b" * 5, b"c" * 3
    joined = _append(_append(_append(bytearray(), first), second), third)
    assert bytes(joined) == first + second + third
    grown = bytearray(b"ab")
    assert _append(grown, b"c") is grown and grown == b"abc"  # appended in place


def test_the_protocol_factory_carries_the_edge_settings_to_worker_processes() -> None:
    """uvicorn pickles its config for --workers N: the bound limits must survive that."""
    settings = Settings(max_header_bytes=8192, header_timeout=3.0, linger_timeout=1.5)
    factory = pickle.loads(pickle.dumps(protocol_factory(settings)))
    assert factory.keywords["limits"] == EdgeLimits(8192, 3.0, 1.5, settings.linger_max_bytes)


# -- bodies read into the app's buffers (BODY_INTO), over a real connection --------------

READ_SIZE = 1000  # the app's buffer for each read


class BodyApp:
    """An ASGI app that reads bodies through BODY_INTO, as the route says.

    /whole reads the body to its end (/own the same in buffers the reader makes);
    /first/<n> reads n bytes and answers (/first-close/<n> with Connection: close);
    /withdrawn withdraws its first read before the body comes; /gone reads until the
    client goes. The answer: whether the extension was offered, the body's SHA-256 and
    length, the largest read."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        reader = scope.get("extensions", {}).get(BODY_INTO)
        path: str = scope["path"]
        body, largest, headers = bytearray(), 0, [(b"content-type", b"application/json")]
        if reader is None:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        else:
            limit = int(path.rsplit("/", 1)[1]) if path.startswith("/first") else None
            if path == "/withdrawn":
                pending = asyncio.ensure_future(reader.read_into(memoryview(bytearray(10))))
                await asyncio.sleep(0.1)
                self.outcomes.append(f"withdrawn={reader.withdraw()}")
                self.outcomes.append(f"read={await pending}")
            buffer = bytearray(READ_SIZE)
            while limit is None or len(body) < limit:
                try:
                    if path == "/own":  # buffers made as the bytes come
                        got = await reader.read(READ_SIZE)
                        n = len(got)
                        buffer[:n] = got
                    else:
                        n = await reader.read_into(memoryview(buffer))
                except ClientDisconnect:
                    self.outcomes.append("disconnected")
                    return
                if n == 0:
                    break
                largest = max(largest, n)
                body += buffer[:n]
            if path.startswith("/first-close"):
                headers.append((b"connection", b"close"))
        answer = json.dumps(
            {
                "offered": reader is not None,
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
                "largest": largest,
            }
        ).encode()
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def body_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, BodyApp]]:
    app = BodyApp()
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop=request.param,
        http=cast(Any, protocol_factory(Settings(linger_timeout=3.0))),
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield port, app
    server.should_exit = True
    thread.join(10)


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _answers(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    """`count` JSON answers read from the socket, in order."""
    data, answers = b"", list[dict[str, Any]]()
    sock.settimeout(10)
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(answers)} answers: {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100 "):
            answers.append({"continue": True})
            continue
        size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(data) < size:
            data += sock.recv(65536)
        answers.append(json.loads(data[:size]))
        data = data[size:]
    return answers


def _expect(body: bytes, largest: int = READ_SIZE) -> dict[str, Any]:
    return {
        "offered": True,
        "sha256": hashlib.sha256(body).hexdigest(),
        "length": len(body),
        "largest": largest,
    }


def test_a_body_is_read_into_the_apps_buffers_exactly(body_server: tuple[int, BodyApp]) -> None:
    """Its first bytes come with the headers, the rest in reads no larger than the
    buffers given; the next request on the connection, sent in the same write right
    after the body, is parsed as a request and not read into the body."""
    port, _ = body_server
    first, second = os.urandom(3 * 1024 * 1024 + 17), os.urandom(5000)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/whole", first) + _post("/whole", second))
        assert _answers(sock, 2) == [_expect(first), _expect(second)]


def test_a_body_is_read_in_buffers_made_as_it_comes(body_server: tuple[int, BodyApp]) -> None:
    port, _ = body_server
    body, after = os.urandom(600_000), os.urandom(10)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/own", body) + _post("/own", after))
        assert _answers(sock, 2) == [_expect(body), _expect(after, largest=len(after))]


def test_only_content_length_bodies_are_offered(body_server: tuple[int, BodyApp]) -> None:
    port, _ = body_server
    chunked = (
        b"POST /whole HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(chunked + b"GET /whole HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answers = _answers(sock, 2)
    assert [a["offered"] for a in answers] == [False, False]
    assert answers[0]["length"] == 5


def test_connections_beyond_many_are_not_offered_direct_reads(
    body_server: tuple[int, BodyApp],
) -> None:
    """With small socket buffers a slow client needs the parser's own buffering."""
    port, _ = body_server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MANY_CONNECTIONS)]
    try:
        time.sleep(0.2)  # all accepted
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post("/whole", b"x" * 5000))
            (answer,) = _answers(sock, 1)
    finally:
        for sock in idle:
            sock.close()
    assert not answer["offered"] and answer["length"] == 5000


def test_expect_100_continue_is_answered_at_the_first_read(
    body_server: tuple[int, BodyApp],
) -> None:
    port, _ = body_server
    body = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            f"POST /whole HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())
        assert _answers(sock, 1) == [{"continue": True}]
        sock.sendall(body)
        assert _answers(sock, 1) == [_expect(body)]


def test_what_the_app_leaves_unread_is_skipped_before_the_next_request(
    body_server: tuple[int, BodyApp],
) -> None:
    port, _ = body_server
    body, after = os.urandom(2 * 1024 * 1024), os.urandom(3000)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/first/100000", body) + _post("/whole", after))
        first, second = _answers(sock, 2)
    assert first["length"] >= 100_000 and first["length"] < len(body)
    assert second == _expect(after)


def test_a_body_left_unread_with_connection_close_is_drained_then_closed(
    body_server: tuple[int, BodyApp],
) -> None:
    """Lingering, as for an unread body uvicorn parses: the client sends all of it and
    reads the answer, and the close that follows is clean (no reset)."""
    port, _ = body_server
    body = os.urandom(4 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/first-close/50000", body))
        assert _answers(sock, 1)[0]["length"] >= 50_000
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # FIN, not a reset


def test_a_waiting_read_can_be_withdrawn(body_server: tuple[int, BodyApp]) -> None:
    port, app = body_server
    body = os.urandom(70_000)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/withdrawn", body)[: -len(body)])
        time.sleep(0.3)  # the app withdraws its first read meanwhile
        sock.sendall(body)
        assert _answers(sock, 1) == [_expect(body)]
    assert app.outcomes[-2:] == ["withdrawn=True", f"read={WITHDRAWN}"]


def test_a_client_gone_mid_body_ends_the_read(body_server: tuple[int, BodyApp]) -> None:
    port, app = body_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post("/gone", os.urandom(1_000_000))[:500_000])
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "disconnected" not in app.outcomes:
        assert time.monotonic() < deadline, app.outcomes
        time.sleep(0.02)
