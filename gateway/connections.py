"""uvicorn's httptools protocol with the gateway's connection rules.

- Open connections are counted for tusd_connections_open.
- Bounded header section: the request line and headers together may take at most
  `max_header_bytes` (431, then close) and must arrive within `header_timeout` of the
  request's first byte or of the connection (408, then close). llhttp itself has no
  size limit, and httptools joins an unfinished header line by concatenation, so an
  endless line would otherwise grow without bound. The same bound covers chunked
  trailers (bytes of framing beyond the body itself).
- Lingering close (as nginx): a response sent before the request body has arrived
  (a refused PATCH) closes the connection only after reading and dropping the rest
  of the body, for at most `linger_timeout` seconds and `linger_max_bytes` bytes, and
  only while the client keeps sending (2 s of silence end it).
  Closing with unread bytes in the socket makes the kernel answer with a reset, and
  a client still writing its body (Node's http module) then reports ECONNRESET or
  EPIPE instead of the status. Dropped bytes are never buffered; the request's task
  and its writer slot are already gone.
- Informational responses: an HTTP/1.1 request's scope advertises the ASGI extension
  `http.response.informational`; the app may then send, before `http.response.start`,
  `{"type": "http.response.informational", "status": 1xx, "headers": [...]}`, written
  to the connection at once (the IETF upload creation's 104). uvicorn sends no 1xx but
  `100 Continue`. Never offered to HTTP/1.0 clients, which must not get one (RFC 9110
  15.2).
- Bodies read into the app's buffers: a request with a Content-Length body offers the
  ASGI extension `gateway.body_into` (`BodyReader`), unless its connection was opened
  beyond MANY_CONNECTIONS (small socket buffers, small reads: there a read armed only
  while the app waits leaves a slow client too little buffer, and its chunks are
  parsed as before). The app reads the body straight from the socket into buffers
  of its own (`read_into`), the kernel copying into them: no bytes object per read,
  no pass through the parser, no copy on the way. The connection then reads as an
  `asyncio.BufferedProtocol` until the body ends, and parses again from there;
  whatever of the body the app leaves unread is skipped (or lingered over) as uvicorn
  does with an unread body. An app uses this or `receive`, not both.
- Request bodies reach the app uncopied: uvicorn (0.55) appends every chunk the
  parser hands over to a bytearray and copies that into a new bytes object for each
  ASGI message. Here a chunk that arrives while nothing is buffered is kept as the
  very bytes object the parser made; `bytes()` of a bytes object is that object.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, cast

import httptools
from starlette.requests import ClientDisconnect
from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from gateway import metrics
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.middleware import BODY_INTO, problem_body
from gateway.tus.headers import TUS_VERSION
from gateway.writer.base import WITHDRAWN

access_log = logging.getLogger("gateway.access")

MAX_HEADER_LINES = 256  # header (and trailer) lines per request
LINGER_IDLE = 2.0  # a lingering connection silent this long is closed (nothing is unread)
# llhttp's message for a Transfer-Encoding whose final coding is not chunked.
_UNKNOWN_CODING = "Request has invalid `Transfer-Encoding`"
# The ASGI extension (and message type) for an informational response before the final one.
INFORMATIONAL = "http.response.informational"
# Reason phrases Python's HTTPStatus lacks (draft-ietf-httpbis-resumable-upload).
_REASONS = {104: "Upload Resumption Supported"}


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 30.0
    linger_timeout: float = 10.0
    linger_max_bytes: int = 64 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            linger_timeout=settings.linger_timeout,
            linger_max_bytes=settings.linger_max_bytes,
        )


def protocol_factory(settings: Settings) -> Callable[..., CountingHttpToolsProtocol]:
    """What uvicorn's `http` option takes: the protocol class with the limits bound."""
    return functools.partial(CountingHttpToolsProtocol, limits=EdgeLimits.from_settings(settings))


# With this many connections open, a new one gets a small kernel receive buffer and
# stops reading sooner when its upload does not take the bytes (waiting for the
# receive budget): a slow client's bytes then wait in its own socket buffer and TCP
# window rather than in this process. Few connections keep the kernel's autotuning
# and uvicorn's 64 KiB mark (fast streams).
MANY_CONNECTIONS = 32
SMALL_RCVBUF = 16 << 10
SMALL_HIGH_WATER = 8 << 10
_open = 0


class CountingHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: EdgeLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or EdgeLimits()
        # The header section of the request being received.
        self._headers_pending = True
        self._header_bytes = 0
        self._header_lines = 0
        self._too_many_lines = False
        self._header_timer: TimerHandle | None = None
        # Since the headers: bytes fed and body bytes, whose difference is framing.
        self._message_bytes = 0
        self._body_bytes = 0
        # Lingering close: "body" parses on to the end of the refused body, "drop" reads
        # and drops everything (the request was refused before its headers ended).
        self._linger: Literal["body", "drop"] | None = None
        self._linger_left = 0
        self._linger_deadline = 0.0
        self._linger_last_read = 0.0
        self._linger_timer: TimerHandle | None = None
        # Reading a body into the app's buffers (BODY_INTO): the request's Content-Length,
        # the protocol installed meanwhile, the read waiting for bytes, its buffer and
        # how many bytes it takes at most.
        # `_skip`: bytes of such a body its app left unread, dropped before parsing on.
        self._body_length = 0
        self._receiver: _BodyReceiver | None = None
        self._read: asyncio.Future[memoryview | None] | None = None
        self._read_view: memoryview | None = None
        self._read_most = 0
        self._read_fresh = False  # the waiting read makes its buffer when bytes come
        self._skip = 0

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        global _open
        _open += 1
        metrics.CONNECTIONS_OPEN.inc()
        self._high_water = HIGH_WATER_LIMIT
        if _open > MANY_CONNECTIONS:
            self._high_water = SMALL_HIGH_WATER
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        global _open
        _open -= 1
        metrics.CONNECTIONS_OPEN.dec()
        self._cancel_header_timer()
        if self._linger is not None:
            self._end_linger("client_closed", close=False)
        read, self._read, self._read_view = self._read, None, None
        if read is not None and not read.done():
            read.set_exception(ClientDisconnect())
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._linger_left -= len(data)
            self._linger_last_read = self.loop.time()
            metrics.LINGER_DROPPED_BYTES.inc(len(data))
            if self._linger_left < 0:
                self._end_linger("byte_limit")
            elif self._linger == "body":
                self._feed(data)  # only to find where the body ends; on_body drops it
            return
        if not self._headers_pending:
            self._message_bytes += len(data)
            self._feed(data)
            framing = self._message_bytes - self._body_bytes
            still_this_body = not (
                self._headers_pending or self._linger is not None or self.transport.is_closing()
            )
            if still_this_body and framing > self.limits.max_header_bytes + self._body_bytes:
                # Chunked trailers (or chunk framing) without end: a hostile client.
                self._reject(GatewayError(ERR.HEADERS_TOO_LARGE, "the trailers are too large"))
            return
        self._arm_header_timer()
        room = self.limits.max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            self._feed(data)
            return
        # Feed only up to the limit: if the headers have not ended by then, refuse.
        self._header_bytes += room
        self._feed(data[:room])
        if self._headers_pending and self._linger is None and not self.transport.is_closing():
            self._reject(
                GatewayError(
                    ERR.HEADERS_TOO_LARGE,
                    f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
                )
            )
        elif not self.transport.is_closing():
            self.data_received(data[room:])

    def _feed(self, data: bytes) -> None:
        # As uvicorn's data_received, with our own answers to what the parser refuses.
        if self._skip:
            # The rest of a body read into the app's buffers that the app left unread.
            n = min(self._skip, len(data))
            self._skip -= n
            self._body_bytes += n
            if self._skip:
                return
            self.on_message_complete()
            data = data[n:]
            if not data or self._linger is not None or self.transport.is_closing():
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)

    def _parse_failed(self, exc: Exception) -> None:
        if self._linger is not None:
            self._end_linger("malformed")
            return
        if self._too_many_lines:
            err = GatewayError(ERR.HEADERS_TOO_LARGE, f"more than {MAX_HEADER_LINES} header lines")
        elif str(exc) == _UNKNOWN_CODING:
            err = GatewayError(
                ERR.UNSUPPORTED_TRANSFER_CODING, "the only transfer coding accepted is chunked"
            )
        else:
            err = GatewayError(ERR.MALFORMED_REQUEST, "the request is not valid HTTP/1.1")
        self._reject(err)

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers_pending = True
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > MAX_HEADER_LINES:
            self._too_many_lines = True
            raise httptools.HttpParserError("too many header lines")
        if not self._headers_pending:
            # A chunked trailer field. uvicorn would append it to the request's headers
            # (scope["headers"]), before the app reads them if it came in the same read:
            # a field a proxy passed on as trailer would count as a header. ASGI has
            # no request trailers; drop it.
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._headers_pending = False
        self._header_bytes = 0
        self._header_lines = 0
        self._message_bytes = self._body_bytes = 0
        self._cancel_header_timer()
        if self._linger is not None or self.transport.is_closing():
            return  # bytes after a refused body: not a request we serve
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:
            # Its close after a response goes through us, to linger when the body is unread.
            self.cycle.transport = _LingerOnClose(self, self.cycle)  # type: ignore[assignment]
            self._body_length = _content_length(self.headers)
            if self._body_length and self._high_water != SMALL_HIGH_WATER:
                extensions = cast(dict[str, Any], self.cycle.scope.setdefault("extensions", {}))
                extensions[BODY_INTO] = BodyReader(self, self.cycle)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Now or, for a pipelined request, once the one before it is answered.
        if cycle.scope["http_version"] == "1.1":
            cycle.scope.setdefault("extensions", {})[INFORMATIONAL] = {}
            app = functools.partial(_with_informational, app, cycle)
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body = _append(cycle.body, body)  # type: ignore[assignment]
        if len(cycle.body) > self._high_water:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._headers_pending = True
        if self._linger == "body":
            self._end_linger("drained")  # the whole refused body has been read: a clean close
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._leave_direct()
        super().on_response_complete()
        if self._linger is not None:
            self._unset_keepalive_if_required()  # the linger has its own deadline

    # -- bodies read into the app's buffers (BODY_INTO) ---------------------------------

    async def read_body(self, view: memoryview | None, most: int) -> memoryview | None:
        """Wait for the current request's next body bytes, at most `most`: read into
        `view`, or (None) into a buffer made only when they arrive. The bytes read, or
        None if the read was withdrawn."""
        if self._read is not None:
            raise RuntimeError("a body read is already waiting")
        if most <= 0:
            raise ValueError("no room to read into")
        if self._receiver is None:
            self._receiver = _BodyReceiver(self)
            self.transport.set_protocol(self._receiver)
        self._read_most = min(most, self._body_length - self._body_bytes)
        self._read_view = None if view is None else view[: self._read_most]
        self._read_fresh = view is None
        self._read = read = self.loop.create_future()
        self.flow.resume_reading()
        try:
            got: memoryview | None = await read
            return got
        finally:
            if self._read is read:  # cancelled before any byte came
                self._end_read()

    def withdraw_read(self) -> bool:
        """A read waiting with the app's buffer gives it back, empty: it returns None
        (BodyReader: WITHDRAWN). A read that makes its own buffer holds none of the app's."""
        read = self._read
        if read is None or read.done() or self._read_fresh:
            return False
        self._end_read()
        read.set_result(None)
        return True

    def _end_read(self) -> None:
        self._read = self._read_view = None
        if not self.transport.is_closing():
            self.flow.pause_reading()  # until the app has room again

    def _buffer(self) -> memoryview:
        """Where the waiting read's bytes go (the protocol's get_buffer)."""
        if self._read is None:  # reading is paused while no read waits
            raise RuntimeError("no body read is waiting")
        if self._read_view is None:
            self._read_view = memoryview(bytearray(self._read_most))
        return self._read_view

    def _body_read(self, n: int) -> None:
        """`n` bytes arrived in the waiting read's buffer."""
        read, view = self._read, self._read_view
        self._read = self._read_view = None
        self._body_bytes += n
        self._message_bytes += n
        if self._body_bytes < self._body_length:
            self.flow.pause_reading()
        else:
            self._leave_direct()
            self.on_message_complete()
        if read is not None and not read.done():
            assert view is not None
            read.set_result(view[:n])

    def _leave_direct(self) -> None:
        """Parse again with a fresh parser, after what is left of the body (`_skip`)."""
        if self._receiver is None:
            return
        self._receiver = None
        read, self._read, self._read_view = self._read, None, None
        if read is not None and not read.done():
            read.set_exception(ClientDisconnect())  # answered while reading: nobody waits
        self._skip = self._body_length - self._body_bytes
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # as uvicorn does, for pipelined requests
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport.set_protocol(self)
        self.flow.resume_reading()

    # -- header deadline ----------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._header_timeout
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._headers_pending or self._linger is not None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a response is still running: close after it
            return
        if self._header_bytes == 0:
            metrics.HEADER_TIMEOUTS.labels("idle").inc()
            self.transport.close()  # nothing of a request arrived: nobody to answer
            return
        metrics.HEADER_TIMEOUTS.labels("partial").inc()
        seconds = self.limits.header_timeout
        self._reject(
            GatewayError(
                ERR.HEADER_TIMEOUT, f"the request headers did not arrive in {seconds:g} s"
            ),
            linger=False,
        )

    # -- answers from here --------------------------------------------------------------

    def _reject(self, err: GatewayError, *, linger: bool = True) -> None:
        """Answer `err` with problem+json and close (after lingering, if asked)."""
        self._headers_pending = False
        self._cancel_header_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is under way (a pipelined request or the body of this one):
            # no second answer can be written into it.
            if self.cycle.response_started:
                self.transport.close()
                return
            self.cycle.disconnected = True  # the app's own answer goes nowhere
            self.cycle.message_event.set()
        request_id = secrets.token_hex(8)
        body = problem_body(err)
        head = [STATUS_LINE[err.status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"tus-resumable: " + TUS_VERSION.encode() + b"\r\n",
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        metrics.ERRORS.labels(str(err.status), err.code).inc()
        access_log.info(
            "request",
            extra={
                "request_id": request_id,
                "status": err.status,
                "error_code": err.code,
                "client": self.client[0] if self.client else None,
            },
        )
        if linger and self._can_linger():
            self._start_linger("drop")
        else:
            self.transport.close()

    # -- lingering close ----------------------------------------------------------------

    def close_after_response(self, cycle: RequestResponseCycle) -> None:
        """A response cycle wants the connection closed after its response."""
        self._leave_direct()
        unread_body = cycle is self.cycle and cycle.more_body and not cycle.disconnected
        if unread_body and self._linger is None and self._can_linger():
            cycle.body = bytearray()  # what the app never read
            self._start_linger("body")
        else:
            self.transport.close()

    def _can_linger(self) -> bool:
        limits = self.limits
        return (
            limits.linger_timeout > 0
            and limits.linger_max_bytes > 0
            and not (self.transport.is_closing())
        )

    def _start_linger(self, mode: Literal["body", "drop"]) -> None:
        self._linger = mode
        self._linger_left = self.limits.linger_max_bytes
        self._linger_last_read = now = self.loop.time()
        self._linger_deadline = now + self.limits.linger_timeout
        self._linger_timer = self.loop.call_at(self._linger_next_check(), self._linger_check)
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        metrics.LINGERING.inc()

    def _linger_next_check(self) -> float:
        return min(self._linger_deadline, self._linger_last_read + LINGER_IDLE)

    def _linger_check(self) -> None:
        """Closes at the deadline, or once the client has sent nothing for LINGER_IDLE
        (nothing unread then: the close is orderly)."""
        self._linger_timer = None
        now = self.loop.time()
        if now >= self._linger_deadline:
            self._end_linger("timeout")
        elif now >= self._linger_last_read + LINGER_IDLE:
            self._end_linger("idle")
        else:
            self._linger_timer = self.loop.call_at(self._linger_next_check(), self._linger_check)

    def _end_linger(self, outcome: str, *, close: bool = True) -> None:
        if self._linger is None:
            return
        self._linger = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        metrics.LINGERING.dec()
        metrics.LINGER_CLOSES.labels(outcome).inc()
        if close:
            self.transport.close()


async def _with_informational(
    app: ASGI3Application,
    cycle: RequestResponseCycle,
    scope: Scope,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
) -> None:
    """`app` with `http.response.informational` messages written by us, the rest by uvicorn."""

    async def sending(message: ASGISendEvent) -> None:
        if message["type"] == INFORMATIONAL:
            event = cast(dict[str, Any], message)
            await _send_informational(cycle, event["status"], event.get("headers", []))
        else:
            await send(message)

    await app(scope, receive, sending)


async def _send_informational(
    cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    if not (100 <= status < 200) or status == 101:
        raise RuntimeError(f"{status} is not an informational status")
    if cycle.response_started:
        raise RuntimeError("an informational response after the final one started")
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected or cycle.transport.is_closing():
        return
    phrase = _REASONS.get(status) or _phrase(status)
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))]
    for name, value in headers:
        if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
            raise RuntimeError("invalid header in an informational response")
        head.append(name.lower() + b": " + value + b"\r\n")
    head.append(b"\r\n")
    cycle.transport.write(b"".join(head))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _LingerOnClose:
    """The transport as one response cycle sees it: its close goes through the protocol."""

    def __init__(self, protocol: CountingHttpToolsProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._cycle = cycle

    def close(self) -> None:
        self._protocol.close_after_response(self._cycle)

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            # The connection went before this answer: the client closed it while a
            # pipelined request behind this one was the current one (uvicorn tells only
            # that one of the loss), or a refusal closed it. The answer goes nowhere, as
            # uvicorn's own do once told; uvloop would raise on the closed transport.
            self._cycle.disconnected = True
            return
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _append(buffered: bytes | bytearray, chunk: bytes) -> bytes | bytearray:
    """The body so far with `chunk` after it, copying only when there is something before."""
    if not buffered:
        return chunk
    if isinstance(buffered, bytearray):
        buffered += chunk
        return buffered
    return bytearray(buffered) + chunk  # a second chunk before the app read the first


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """A request's Content-Length (0 if it has none, or is chunked). The parser has
    refused a malformed or repeated one already."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return 0
        if name == b"content-length":
            length = int(value)
    return length


class BodyReader:
    """The ASGI extension BODY_INTO of one request: its body read into the app's buffers.

    The bytes the parser took along with the headers come first, then the connection
    reads straight into the buffer of each `read_into`. Nothing is read while no read
    waits: the body's bytes wait in the socket, as with uvicorn's flow control."""

    def __init__(self, protocol: CountingHttpToolsProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle

    async def read_into(self, view: memoryview) -> int:
        """The next bytes of the body at the start of `view`: how many, 0 at its end,
        WITHDRAWN after `withdraw`. Raises ClientDisconnect if the client went away."""
        buffered = self._buffered(len(view))
        if buffered is None:
            got = await self._protocol.read_body(view, len(view))
            return WITHDRAWN if got is None else len(got)
        view[: len(buffered)] = buffered
        return len(buffered)

    async def read(self, most: int) -> memoryview:
        """The next bytes of the body, at most `most`, in a buffer made when they come:
        empty at its end. Raises ClientDisconnect if the client went away."""
        buffered = self._buffered(most)
        if buffered is None:
            got = await self._protocol.read_body(None, most)
            assert got is not None  # only a read into the app's buffer is withdrawn
            return got
        return memoryview(buffered)

    def _buffered(self, most: int) -> bytes | bytearray | None:
        """Up to `most` of the bytes the parser took (b"" at the body's end), or None:
        the next bytes are still in the socket."""
        cycle = self._cycle
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        if cycle.disconnected:
            raise ClientDisconnect
        if cycle.body:
            taken = cycle.body[:most]
            cycle.body = cycle.body[most:]
            return taken
        if not cycle.more_body or cycle.response_complete or self._protocol.cycle is not cycle:
            return b""
        return None

    def withdraw(self) -> bool:
        """The waiting read, if any and still empty, returns WITHDRAWN."""
        return self._protocol.cycle is self._cycle and self._protocol.withdraw_read()


class _BodyReceiver(asyncio.BufferedProtocol):
    """The connection's protocol while a body is read into the app's buffers."""

    def __init__(self, protocol: CountingHttpToolsProtocol) -> None:
        self._protocol = protocol

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._protocol._buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._protocol._body_read(nbytes)

    def eof_received(self) -> None:
        self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()
