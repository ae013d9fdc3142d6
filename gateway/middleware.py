"""ASGI middleware for the tus wire rules that hold for every response."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ERR, GatewayError
from gateway.tus.headers import TUS_VERSION

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


def problem_headers(err: GatewayError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/problem+json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    return headers


class TusMiddleware:
    """Honours X-HTTP-Method-Override and adds Tus-Resumable to every non-OPTIONS response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        overrides = [v for k, v in scope["headers"] if k == b"x-http-method-override"]
        if overrides:
            method = overrides[0].decode("latin-1").strip().upper()
            if len(overrides) != 1 or method not in _METHODS:
                await self._reject(
                    send,
                    GatewayError(ERR.INVALID_HEADER, "X-HTTP-Method-Override names no tus method"),
                )
                return
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

    async def _reject(self, send: Send, err: GatewayError) -> None:
        body = problem_body(err)
        headers = [
            *problem_headers(err),
            (b"tus-resumable", TUS_VERSION.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
