"""uvicorn's httptools protocol, counting open connections and passing bodies on uncopied.

Connections are counted for tusd_connections_open. Request bodies: uvicorn (0.54)
appends every chunk the parser hands over to a bytearray and copies that into a new
bytes object for each ASGI message: two copies of every uploaded byte on the event
loop thread, on top of the socket read and the parser's own. Here a chunk that
arrives while nothing is buffered is kept as the very bytes object the parser made;
`bytes()` of a bytes object is that object, so it reaches the app as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import metrics

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

    def connection_lost(self, exc: Exception | None) -> None:
        global _open
        _open -= 1
        metrics.CONNECTIONS_OPEN.dec()
        super().connection_lost(exc)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body = _append(cycle.body, body)  # type: ignore[assignment]
        if len(cycle.body) > self._high_water:
            self.flow.pause_reading()
        cycle.message_event.set()


def _append(buffered: bytes | bytearray, chunk: bytes) -> bytes | bytearray:
    """The body so far with `chunk` after it, copying only when there is something before."""
    if not buffered:
        return chunk
    if isinstance(buffered, bytearray):
        buffered += chunk
        return buffered
    return bytearray(buffered) + chunk  # a second chunk before the app read the first
