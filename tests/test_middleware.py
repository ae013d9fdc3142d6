"""The middleware on its own: an unexpected exception still gets problem+json and ids."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.middleware import AccessMiddleware, TusMiddleware, route_of


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug, not a client error")


def app() -> Starlette:
    return Starlette(
        routes=[Route("/files/{upload_id}", boom, methods=["PATCH"])],
        middleware=[Middleware(AccessMiddleware), Middleware(TusMiddleware)],
    )


async def test_unexpected_exception_is_a_problem_with_request_id() -> None:
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.patch("/files/abc", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "req-1"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.json()["code"] == "ERR_INTERNAL_SERVER_ERROR"
    assert "a bug" not in response.text  # no internals leak to the client


def test_routes_never_carry_upload_ids() -> None:
    assert route_of("/files/", "/files/") == "/files/"
    assert route_of("/files/AbCdEfGhIjKlMnOpQrStUv", "/files/") == "/files/{id}"
    assert route_of("/files/AbCdEfGhIjKlMnOpQrStUv/manifest", "/files/") == "/files/{id}/manifest"
    assert route_of("/files/AbCdEfGhIjKlMnOpQrStUv/grants", "/files/") == "/files/{id}/grants"
    granted = "/files/AbCdEfGhIjKlMnOpQrStUv/grants/gr_AbCdEfGhIjKlMnOpQrStUv"
    assert route_of(granted, "/files/") == "/files/{id}/grants/{grant}"
    assert route_of("/etc/passwd", "/files/") == "other"
