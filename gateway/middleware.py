"""ASGI middleware for the tus wire rules that hold for every response."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.errors import ERR, GatewayError
from gateway.tus.headers import TUS_VERSION
from gateway.writer.base import DirectRead

log = logging.getLogger("gateway.http")

_PHRASES = {s.value: s.phrase for s in HTTPStatus} | {460: "Checksum Mismatch"}
_METHODS = {"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"}


def problem_body(err: GatewayError) -> bytes:
    """RFC 9457 problem details: a stable code and a human sentence, never a trace."""
    document = {
        "type": f"urn:imaging-gateway:error:{err.code}",
        "title": _PHRASES.get(err.status, err.code),
        "status": err.status,
        "detail": err.detail,
        "code": err.code,
    }
    return json.dumps(document).encode()


async def send_problem(send: Send, err: GatewayError) -> None:
    """Answer `err` straight on the ASGI channel, for errors met outside starlette's
    handlers (so Tus-Resumable is added here too)."""
    body = problem_body(err)
    headers = [
        (b"content-type", b"application/problem+json"),
        *((k.lower().encode(), v.encode()) for k, v in err.headers.items()),
        (b"tus-resumable", TUS_VERSION.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("gateway.access")


def route_of(path: str, base_path: str) -> str:
    """A low-cardinality route label: never an upload id."""
    if path.startswith(base_path):
        rest = path[len(base_path) :]
        if not rest:
            return base_path
        sub = rest.partition("/")[2]
        if sub.startswith("grants/"):
            return base_path + "{id}/grants/{grant}"
        if sub in ("manifest", "grants"):
            return base_path + "{id}/" + sub
        return base_path + "{id}"
    if path.startswith("/admin/holds/"):
        return "/admin/holds/{id}"
    if path.startswith("/admin/tokens/"):
        return "/admin/tokens/{id}"
    return path if path in _FIXED_ROUTES else "other"


_FIXED_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/jwks.json",
        "/.well-known/sm2-manifest-keys.json",
        "/.well-known/sm2-manifest-keys.pem",
        "/admin/tokens",
        "/admin/keys",
    }
)


# The ASGI extension of a request whose Content-Length body the app can read into its
# own buffers (connections.BodyReader).
BODY_INTO = "gateway.body_into"


class AccessMiddleware:
    """Request ids, metrics and one JSON log line per request."""

    def __init__(self, app: ASGIApp, base_path: str = "/files/") -> None:
        self.app = app
        self.base_path = base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = [v for k, v in scope["headers"] if k == b"x-request-id"]
        candidate = given[0].decode("latin-1") if len(given) == 1 else ""
        request_id = candidate if _REQUEST_ID.fullmatch(candidate) else secrets.token_hex(8)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        method = scope["method"]
        counts_upload_bytes = method in ("PATCH", "POST")
        received = 0
        status = 500
        sent = 0

        def count(n: int) -> None:
            nonlocal received
            received += n
            if counts_upload_bytes:
                metrics.BYTES_RECEIVED.inc(n)

        extensions = scope.get("extensions") or {}
        if BODY_INTO in extensions:
            extensions[BODY_INTO] = _CountingBody(extensions[BODY_INTO], count)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                count(len(message["body"]))
            return message

        async def observing_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await observing_send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if started:
                raise
            # Unexpected errors escape starlette's handlers out here: answer them as
            # problem+json with the request id, like every other error.
            log.exception("unexpected error")
            err = GatewayError(ERR.INTERNAL, "the server failed; the upload state is intact")
            state["error_code"] = err.code
            await send_problem(observing_send, err)
        finally:
            seconds = time.perf_counter() - start
            wire_method = method
            method = state.get("method", method)  # after X-HTTP-Method-Override
            metrics.REQUESTS.labels(method).inc()
            metrics.REQUEST_DURATION.labels(method, str(status)).observe(seconds)
            code = state.get("error_code")
            if status >= 400:
                metrics.ERRORS.labels(str(status), code or str(status)).inc()
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "wire_method": wire_method if wire_method != method else None,
                    "client": (scope.get("client") or ("",))[0] or None,
                    "route": route_of(scope["path"], self.base_path),
                    "status": status,
                    "bytes_in": received,
                    "bytes_out": sent,
                    "duration_ms": round(seconds * 1000, 2),
                    "upload_id": state.get("upload_id"),
                    "principal": state.get("principal"),
                    "error_code": code,
                },
            )


class TusMiddleware:
    """Honours X-HTTP-Method-Override on POST and adds Tus-Resumable to every non-OPTIONS
    response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        overrides = [v for k, v in scope["headers"] if k == b"x-http-method-override"]
        if overrides and scope["method"] != "POST":
            # Honoured on POST only: a GET (a link, an <img>, a prefetch) must never
            # become a DELETE or a PATCH.
            metrics.METHOD_OVERRIDES.labels("ignored").inc()
        elif overrides:
            method = overrides[0].decode("latin-1").strip().upper()
            if len(overrides) != 1 or method not in _METHODS:
                await send_problem(
                    send,
                    GatewayError(ERR.INVALID_HEADER, "X-HTTP-Method-Override names no tus method"),
                )
                return
            metrics.METHOD_OVERRIDES.labels("honoured").inc()
            scope.setdefault("state", {})["method"] = method
            scope = dict(scope, method=method)
        is_options = scope["method"] == "OPTIONS"

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start" and not is_options:
                message["headers"] = [
                    *message.get("headers", []),
                    (b"tus-resumable", TUS_VERSION.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_version)


# RFC 9110 section 7.2: uri-host [ ":" port ]; uri-host an IP-literal, IPv4 or reg-name.
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(:[0-9]{0,5})?")


class HttpRulesMiddleware:
    """HTTP/1.1 message rules the parser leaves to us.

    - One valid Host line (RFC 9112 section 3.2: otherwise 400). The gateway never
      builds a URL from Host, but a request a proxy and we could read differently
      is refused.
    - Transfer-Encoding: chunked only (501 for any other coding: gzip, chunked would
      otherwise be stored still compressed).
    - A response sent before the request body was read says `Connection: close`; the
      protocol then reads and drops the rest for a bounded time before closing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        err = _host_error(scope) or _transfer_coding_error(headers)
        has_body = any(k == b"transfer-encoding" for k, _ in headers) or any(
            k == b"content-length" and v.strip() not in (b"", b"0") for k, v in headers
        )
        body_done = not has_body

        async def tracking_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message["headers"] = [
                    *(h for h in message.get("headers", []) if h[0].lower() != b"connection"),
                    (b"connection", b"close"),
                ]
            await send(message)

        if err is not None:
            scope.setdefault("state", {})["error_code"] = err.code
            await send_problem(closing_send, err)
            return
        await self.app(scope, tracking_receive, closing_send)


def _host_error(scope: Scope) -> GatewayError | None:
    hosts = [v for k, v in scope["headers"] if k == b"host"]
    if len(hosts) > 1:
        return GatewayError(ERR.INVALID_HOST, "send one Host header, not several")
    if not hosts:
        if scope.get("http_version") == "1.0":
            return None
        return GatewayError(ERR.INVALID_HOST, "an HTTP/1.1 request needs a Host header")
    if not _HOST.fullmatch(hosts[0]):
        return GatewayError(ERR.INVALID_HOST, "the Host header is not a host[:port]")
    return None


def _transfer_coding_error(headers: list[tuple[bytes, bytes]]) -> GatewayError | None:
    codings = [
        c.strip().lower()
        for k, v in headers
        if k == b"transfer-encoding"
        for c in v.split(b",")
        if c.strip()
    ]
    if codings and codings != [b"chunked"]:
        return GatewayError(
            ERR.UNSUPPORTED_TRANSFER_CODING, "the only transfer coding accepted is chunked"
        )
    return None


class _CountingBody:
    """A BODY_INTO reader whose bytes are counted as those of `receive` are."""

    def __init__(self, reader: DirectRead, count: Callable[[int], None]) -> None:
        self._reader = reader
        self._count = count

    async def read_into(self, view: memoryview) -> int:
        n = await self._reader.read_into(view)
        if n > 0:
            self._count(n)
        return n

    async def read(self, most: int) -> memoryview:
        got = await self._reader.read(most)
        if got:
            self._count(len(got))
        return got

    def withdraw(self) -> bool:
        return self._reader.withdraw()
