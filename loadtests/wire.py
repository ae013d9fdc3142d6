"""A PATCH over a raw socket: paced by a token bucket, hashed as it is sent, and cut
mid-body on purpose (a network drop: part of the body, then the connection closes)."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import select
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from loadtests.body import BLOCK, Body, RunningHash
from loadtests.throttle import TokenBucket, send

OCTET = "application/offset+octet-stream"
# A slow link's send buffer. Over a real path of a few Mbit/s a phone's TCP stack grows
# its buffer to a few times the bandwidth-delay product, tens to hundreds of KiB; over
# loopback Linux would grow it to megabytes of body waiting for a gateway behind.
LINK_SEND_BUFFER = 128 << 10
DRAIN_POLL = 0.002  # seconds between looks at the send queue after a body's last byte


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Sent:
    reply: Reply | None  # None: the connection was cut on purpose
    sent: int  # body bytes handed to the socket
    send_s: float  # from the request line until the gateway's host had the whole body
    ack_s: float  # from then to the status line: what the gateway took to answer


class ConnectionLost(Exception):
    """The gateway closed or reset the connection without an answer."""


def patch(
    url: str,
    headers: dict[str, str],
    body: Body,
    start: int,
    end: int,
    *,
    bucket: TokenBucket | None,
    hasher: RunningHash | None,
    cut_after: int | None = None,
    reset: bool = False,
    stop: Callable[[], bool] = lambda: False,
    timeout: float = 120.0,
) -> Sent:
    """Send body[start:end] at Upload-Offset `start`. With `cut_after`, close the
    connection once that many body bytes are out: with a FIN, or with `reset` an RST
    (as a dying radio link leaves it); `stop` cuts it too, between blocks."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"PATCH {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {end - start}",
        f"Upload-Offset: {start}",
        f"Content-Type: {OCTET}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    began = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    if bucket is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_SEND_BUFFER)
    try:
        sent = 0
        try:
            send(sock, head, None)
            offset = start
            while offset < end:
                size = min(BLOCK, end - offset)
                if cut_after is not None:
                    size = min(size, start + cut_after - offset)
                if size <= 0 or stop():
                    _cut(sock, reset=reset)
                    return Sent(None, sent, time.monotonic() - began, 0.0)
                data = body.read(offset, size)
                send(sock, data, bucket)
                if hasher is not None:
                    hasher.feed(offset, data)
                offset += size
                sent += size
        except OSError as exc:
            # The gateway may answer early (a refusal) and close: read that answer.
            reply = _read_reply(sock, timeout=2.0)
            if reply is None:
                raise ConnectionLost(f"sending the body: {exc!r}") from exc
            return Sent(reply, sent, time.monotonic() - began, 0.0)
        _wait_delivered(sock, began + timeout)
        sent_at = time.monotonic()
        reply = _read_reply(sock, timeout=timeout)
        if reply is None:
            raise ConnectionLost("no answer after the body")
        done = time.monotonic()
        return Sent(reply, sent, sent_at - began, done - sent_at)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer's kernel has not acknowledged yet."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", out)[0])


def _wait_delivered(sock: socket.socket, deadline: float) -> None:
    """Wait until the gateway's host has every byte sent (the send queue is empty), or
    the gateway answered or closed first (it may refuse a body early), or `deadline`.

    `poll`, not `select`: with a thousand users the load generator's descriptors pass
    1024, which `select` cannot take."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while _unacknowledged(sock) and time.monotonic() < deadline:
        if poller.poll(DRAIN_POLL * 1000):
            return


def _cut(sock: socket.socket, *, reset: bool) -> None:
    if reset:  # close at once with an RST instead of a FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_reply(sock: socket.socket, timeout: float) -> Reply | None:
    try:
        sock.settimeout(timeout)
        response = http.client.HTTPResponse(sock, method="PATCH")
        response.begin()
        content = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, headers, content)
    except (OSError, http.client.HTTPException):
        return None
