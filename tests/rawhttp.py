"""What httpx would not send: exact request bytes, and PATCH bodies paced or cut midway.

`StreamingPatch` sends a PATCH body from a background thread, counting the bytes it
has handed to the socket, so a test can act (kill the server, send a competing
request) while a body is in the middle of arriving. `RawPatch` writes a PATCH on a bare
socket, so a test controls when each body byte goes out; `raw_request` sends request
bytes as they are (dot segments, percent escapes, a Content-Length the body does not
match) and reads one response.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

from tests.server import GatewayProcess
from tests.tushttp import patch_headers


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
    headers: dict[str, str]  # lower-case names; the last line wins
    body: bytes
    elapsed: float = 0.0  # from sending the request to the end of the answer


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
