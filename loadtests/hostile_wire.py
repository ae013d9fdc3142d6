"""Send one hostile request over a bare socket exactly as built, and read what comes back.

How the bytes go out is part of the attack: whole, cut off midway (a close), cut with
the write side shut (a half-closed socket), or trickled in small pieces for a bounded
while. Whatever the gateway answers is parsed loosely (status lines, headers, bodies by
Content-Length or chunked framing), so several answers to pipelined requests count too.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from enum import Enum


class Send(Enum):
    WHOLE = "whole"  # every byte, then read
    CUT = "cut"  # the first `cut` bytes, then close (a FIN)
    RESET = "reset"  # the first `cut` bytes, then close with an RST
    HALF = "half"  # the first `cut` bytes, then shut the write side and read
    TRICKLE = "trickle"  # every byte in small pieces with pauses (bounded), then read
    STALL = "stall"  # the first `cut` bytes, silence for STALL_SECONDS, the rest, then read


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)  # every answer read, in order
    answers: list[tuple[int, bool]] = field(default_factory=list)  # (status, Retry-After?)
    closed: bool = False  # the gateway closed (or reset) the connection
    timed_out: bool = False  # no complete answer within the timeout
    refused: bool = False  # the connection could not be made (the gateway is gone?)
    seconds: float = 0.0
    offset: int | None = None  # the last Upload-Offset answered, if any

    @property
    def label(self) -> str:
        if self.statuses:
            return str(self.statuses[0])
        return "timeout" if self.timed_out else "refused" if self.refused else "closed"


class _Reader:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.eof = False

    def fill(self) -> bool:
        """Read more; False at EOF, a reset or the deadline."""
        if self.eof:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buf:
            if not self.fill():
                return None
        line, _, self.buf = self.buf.partition(marker)
        return line

    def take(self, size: int) -> bool:
        while len(self.buf) < size:
            if not self.fill():
                return False
        self.buf = self.buf[size:]
        return True


def _read_answer(reader: _Reader, method: str, outcome: Outcome) -> bool:
    """One response (after any 1xx); False when the connection ended or garbled it."""
    while True:
        head = reader.until(b"\r\n\r\n")
        if head is None:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return False
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200 or status == 101:
            break
    outcome.statuses.append(status)
    outcome.answers.append((status, "retry-after" in headers))
    if "upload-offset" in headers and headers["upload-offset"].isdigit():
        outcome.offset = int(headers["upload-offset"])
    if method == "HEAD" or status in (204, 304):
        return True
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = reader.until(b"\r\n")
            if size_line is None:
                return False
            size = int(size_line.split(b";")[0] or b"0", 16)
            if not reader.take(size + 2):
                return False
            if size == 0:
                return True
    length = headers.get("content-length", "0")
    return reader.take(int(length)) if length.isdigit() else False


def exchange(
    data: bytes,
    *,
    port: int,
    source: str,
    method: str,
    mode: Send,
    cut: int,
    answers: int,
    timeout: float,
) -> Outcome:
    """Send `data` to 127.0.0.1:`port` from `source` as `mode` says; read up to
    `answers` responses (at least one) within `timeout` seconds."""
    outcome = Outcome()
    began = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            outcome.refused = True
            return outcome
        with contextlib.suppress(OSError):  # closed while we were sending: read what it said
            _send(sock, data, mode, cut)
        if mode in (Send.CUT, Send.RESET):
            if mode is Send.RESET:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            outcome.closed = True
            return outcome
        reader = _Reader(sock, began + timeout)
        try:
            for _ in range(max(1, answers)):
                if not _read_answer(reader, method, outcome):
                    outcome.closed = reader.eof
                    break
        except TimeoutError:
            outcome.timed_out = True
        except ValueError:
            pass  # a response we could not frame: what was parsed stands
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        outcome.seconds = time.monotonic() - began
    return outcome


TRICKLE_PIECES = 6
TRICKLE_PAUSE = 0.15
STALL_SECONDS = 2.5  # beyond the tight header and network timeouts a run may set


def _send(sock: socket.socket, data: bytes, mode: Send, cut: int) -> None:
    if mode is Send.WHOLE:
        sock.sendall(data)
    elif mode in (Send.CUT, Send.RESET):
        sock.sendall(data[:cut])
        time.sleep(0.05)
    elif mode is Send.HALF:
        sock.sendall(data[:cut])
        sock.shutdown(socket.SHUT_WR)
    elif mode is Send.STALL:
        sock.sendall(data[:cut])
        time.sleep(STALL_SECONDS)
        sock.sendall(data[cut:])
    else:
        step = max(1, len(data) // TRICKLE_PIECES)
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])
            time.sleep(TRICKLE_PAUSE)
