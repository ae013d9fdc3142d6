"""A webhook receiver for the black-box tests: a tiny HTTP server on 127.0.0.1 that
records every request (headers and body) and answers what the test says: a status, a
JSON document (for the pre-create hook), or nothing at all (it hangs, to be killed).

In this process (`HookReceiver`: a thread; its answer can change at any time), or as
its own process (`python -m tests.hook_receiver PORT LOG MODE`, `ReceiverProcess`), which
a test kills with SIGKILL in the middle of a delivery and starts again on the same port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event_id(self) -> str:
        return self.headers["gateway-event-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HookReceiver:
    """Answers `status` with `document` as JSON (none: an empty body); `hang`: reads the
    request and never answers."""

    status: int = 204
    document: object | None = None
    hang: bool = False
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append(Received(self.path, headers, body))
                if receiver.hang:
                    time.sleep(30)
                    return
                data = b"" if receiver.document is None else json.dumps(receiver.document).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} requests arrived")
            time.sleep(0.02)
        return list(self.received)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()


class ReceiverProcess:
    """The receiver as a process of its own on a fixed port, logging to a JSON-lines file."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self, mode: str) -> ReceiverProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hook_receiver", str(self.port), str(self.log), mode]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    def received(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.received()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} requests arrived")
            time.sleep(0.02)
        return found

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def main() -> None:
    port, log, mode = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            line = {
                "event_id": self.headers.get("Gateway-Event-Id"),
                "signature": self.headers.get("Gateway-Signature"),
                "body": body.decode(),
            }
            with log.open("a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if mode == "hang":
                time.sleep(3600)
            self.send_response(204 if mode == "ok" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
