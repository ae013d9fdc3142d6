"""The upload page (GATEWAY_UI): a static page at /ui/ that uploads with tus-js-client.

Its files ship in the package (gateway/ui/static/; tus.min.js is vendored by
scripts/build-ui) and are read once when the app is built. Every answer carries a strict
CSP: no inline code or style, connections only to this origin and GATEWAY_PUBLIC_URL's
(where the Location of an upload points). The page's settings are /ui/config.json.
"""

from __future__ import annotations

import importlib.resources
import json
import urllib.parse

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.config import Settings

PREFIX = "/ui/"
# Served under /ui/static/; the page itself is /ui/.
STATIC_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "tus.min.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def content_security_policy(settings: Settings) -> str:
    connect = ["'self'"]
    public = public_origin(settings.public_url)
    if public:
        connect.append(public)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src " + " ".join(connect),
            "img-src 'self' data:",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def public_origin(public_url: str) -> str:
    """The origin (scheme://host[:port]) of GATEWAY_PUBLIC_URL, or "" if unset."""
    if not public_url:
        return ""
    parts = urllib.parse.urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}"


def page_config(settings: Settings) -> dict[str, object]:
    """What app.js reads from config.json: the tus endpoint, relative so that the page
    and the endpoint share an origin whatever name the page was loaded by, and the chunk
    size, one sealed record, so that each PATCH fills a record."""
    return {"endpoint": settings.base_path, "chunkSize": settings.segment_size}


def ui_routes(settings: Settings) -> list[BaseRoute]:
    """The page's routes; the app factory mounts them only when settings.ui is true."""
    files = importlib.resources.files(__package__) / "static"
    static = {name: (files / name).read_bytes() for name in STATIC_TYPES}
    index = (files / "index.html").read_bytes()
    config = json.dumps(page_config(settings)).encode()
    headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }

    async def page(request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=headers)

    async def page_settings(request: Request) -> Response:
        return Response(config, media_type="application/json", headers=headers)

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            raise HTTPException(404)  # the app's problem answer, as for any unknown path
        return Response(static[name], media_type=STATIC_TYPES[name], headers=headers)

    async def to_page(request: Request) -> Response:
        # A relative Location: never built from the untrusted Host header.
        return RedirectResponse(PREFIX, status_code=308)

    return [
        Route(PREFIX.rstrip("/"), to_page, methods=["GET", "HEAD"]),
        Route(PREFIX, page, methods=["GET", "HEAD"]),
        Route(PREFIX + "config.json", page_settings, methods=["GET", "HEAD"]),
        Route(PREFIX + "static/{name}", static_file, methods=["GET", "HEAD"]),
    ]
