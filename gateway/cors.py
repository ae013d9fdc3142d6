"""CORS: lets web apps on the configured origins use the gateway (GATEWAY_CORS_ORIGINS).

Two middlewares, built only when origins are configured (without them no response
carries a CORS header): `CorsMiddleware` puts the headers on every response, and
`PreflightMiddleware` answers browsers' preflights.
The gateway authenticates with `Authorization: Bearer`, which a page sets itself: that
is not a credential in the CORS sense (cookies, HTTP auth, TLS client certificates), so
`Access-Control-Allow-Credentials` is never sent and `*` may be configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ERR, GatewayError
from gateway.middleware import problem_body

log = logging.getLogger("gateway.cors")

ANY = "*"
MAX_AGE = 86400  # browsers cap it lower (Chromium: 2 h)
ALLOW_METHODS = ("POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS")
ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Request-ID",
    "Range",
    # draft-ietf-httpbis-resumable-upload
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
)
EXPOSE_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "X-Request-ID",
    "Upload-Deletion-Receipt",
    "Retry-After",
    "Content-Range",
    "Content-Disposition",
    # draft-ietf-httpbis-resumable-upload
    "Upload-Complete",
    "Upload-Incomplete",
    "Upload-Draft-Interop-Version",
    "Upload-Limit",
)


def _vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with Origin added to Vary (one Vary line)."""
    values = [v for k, v in headers if k.lower() == b"vary"]
    names = [n.strip() for v in values for n in v.split(b",") if n.strip()]
    if b"*" in names or any(n.lower() == b"origin" for n in names):
        return headers
    kept = [h for h in headers if h[0].lower() != b"vary"]
    return [*kept, (b"vary", b", ".join([*names, b"Origin"]))]


def _shown_origin(scope: Scope) -> str:
    given = [v for k, v in scope["headers"] if k == b"origin"]
    return repr(b", ".join(given)[:200])[2:-1]


def _joined(names: Iterable[str]) -> bytes:
    return ", ".join(names).encode()


def origin_of(scope: Scope) -> tuple[bool, str | None]:
    """Whether the request names an Origin, and that origin if it names exactly one
    (several lines: no browser sends that, and none is allowed)."""
    given = [v for k, v in scope["headers"] if k == b"origin"]
    return bool(given), given[0].decode("latin-1") if len(given) == 1 else None


def is_preflight(scope: Scope) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method. tus's
    own OPTIONS (discovery) carries no Access-Control-Request-Method."""
    return (
        scope["method"] == "OPTIONS"
        and origin_of(scope)[0]
        and any(k == b"access-control-request-method" for k, _ in scope["headers"])
    )


class Origins:
    """The origins allowed, and the Access-Control-Allow-Origin answer for one."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        if not origins:
            raise ValueError("CORS needs at least one origin")
        self.any = origins == (ANY,)
        self.origins = frozenset(origins)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    def allow_origin(self, origin: str) -> tuple[bytes, bytes]:
        value = ANY if self.any else origin
        return (b"access-control-allow-origin", value.encode("latin-1"))


class CorsMiddleware:
    """Adds the CORS headers to every response but a preflight's, errors included.

    Outermost, so errors answered by the other middlewares (the access log's answer to
    an unexpected error, the HTTP rules) carry them too. A response to a request whose
    Origin is allowed gets Access-Control-Allow-Origin and -Expose-Headers; every
    response says `Vary: Origin`. Requests from other origins are served as usual: the
    token, not the origin, authorises them (and a page the gateway serves itself sends
    its own Origin).
    """

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.origins = Origins(origins)
        self._expose = (b"access-control-expose-headers", _joined(EXPOSE_HEADERS))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        _, origin = origin_of(scope)
        # A preflight's answer (PreflightMiddleware) is complete as it is.
        decorate = origin is not None and self.origins.allowed(origin) and not is_preflight(scope)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = _vary_origin(list(message.get("headers", [])))
                if decorate and origin is not None:
                    out += [self.origins.allow_origin(origin), self._expose]
                message["headers"] = out
            await send(message)

        await self.app(scope, receive, send_with_cors)


class PreflightMiddleware:
    """Answers CORS preflights, without a token (browsers send none): 204 with the
    methods, request headers and Max-Age allowed for an allowed origin, `403
    ERR_ORIGIN_NOT_ALLOWED` without them for another. It sits inside the access log
    (preflights are logged and counted) and outside the audit log (an unauthenticated
    preflight is not an access attempt worth an entry) and the routes."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.origins = Origins(origins)
        self._allow = [
            (b"access-control-allow-methods", _joined(ALLOW_METHODS)),
            (b"access-control-allow-headers", _joined(ALLOW_HEADERS)),
            (b"access-control-max-age", str(MAX_AGE).encode()),
            (b"vary", b"Origin"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_preflight(scope):
            await self.app(scope, receive, send)
            return
        _, origin = origin_of(scope)
        if origin is not None and self.origins.allowed(origin):
            status, body = 204, b""
            out = [self.origins.allow_origin(origin), *self._allow]
        else:
            scope.setdefault("state", {})["error_code"] = ERR.ORIGIN_NOT_ALLOWED.code
            log.info("preflight refused", extra={"origin": _shown_origin(scope)})
            body = problem_body(
                GatewayError(
                    ERR.ORIGIN_NOT_ALLOWED,
                    "this origin may not use the gateway from a browser (GATEWAY_CORS_ORIGINS)",
                )
            )
            status = ERR.ORIGIN_NOT_ALLOWED.status
            out = [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"vary", b"Origin"),
            ]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})
