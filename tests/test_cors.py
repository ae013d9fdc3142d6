"""CORS on its own: origins as configured, preflights, the headers every response gets."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import ConfigError, load_settings, parse_cors_origins
from gateway.cors import (
    ALLOW_HEADERS,
    ANY,
    EXPOSE_HEADERS,
    CorsMiddleware,
    PreflightMiddleware,
)
from gateway.errors import ERR, GatewayError
from gateway.middleware import AccessMiddleware, HttpRulesMiddleware, TusMiddleware

PACS = "https://pacs.example.org"
OTHER = "https://evil.example"
TUS_REQUEST_HEADERS = (
    "authorization, tus-resumable, upload-offset, content-type, upload-checksum, x-request-id"
)


# -- origins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("", ()),
        ("*", (ANY,)),
        (" * ", (ANY,)),
        (PACS, (PACS,)),
        (f"{PACS}, http://localhost:3000", (PACS, "http://localhost:3000")),
        (f"{PACS},{PACS}", (PACS,)),
        ("http://[::1]:8080", ("http://[::1]:8080",)),
        ("https://pacs.example.org:8443", ("https://pacs.example.org:8443",)),
    ],
)
def test_origins_parse(value: str, origins: tuple[str, ...]) -> None:
    assert parse_cors_origins(value) == origins


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("https://PACS.example.org", "write it as browsers send it, 'https://pacs.example.org'"),
        ("https://pacs.example.org:443", "'https://pacs.example.org'"),
        ("http://pacs.example.org:80", "'http://pacs.example.org'"),
        ("https://pacs.example.org/", "no path"),
        ("https://pacs.example.org/upload", "no path"),
        ("pacs.example.org", "scheme://host"),
        ("ftp://pacs.example.org", "http or https"),
        ("https://user@pacs.example.org", "scheme://host"),
        ("https://pacs.example.org?x=1", "scheme://host"),
        ("https://pacs.example.org:99999", "not a scheme://host[:port] origin"),
        ("https://pacs.exämple.org", "scheme://host"),
        ("null", "'null'"),
        (f"{PACS},", "an empty entry"),
        (f"*,{PACS}", "give it alone"),
    ],
)
def test_malformed_origins_are_refused(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cors_origins(value)
    assert str(caught.value).startswith("GATEWAY_CORS_ORIGINS: ")
    assert says in str(caught.value)


def test_settings_name_the_variable_for_a_bad_origin() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_CORS_ORIGINS: 'https://pacs/' must be"):
        load_settings(environ={"GATEWAY_CORS_ORIGINS": "https://pacs/"})
    settings = load_settings(environ={"GATEWAY_CORS_ORIGINS": f"{PACS}, {OTHER}"})
    assert settings.cors_origin_list == (PACS, OTHER)
    assert load_settings(environ={}).cors_origin_list == ()


# -- the middleware ----------------------------------------------------------------------------


async def tus_endpoint(request: Request) -> Response:
    if request.method == "OPTIONS":  # tus discovery
        return Response(status_code=204, headers={"Tus-Version": "1.0.0"})
    if request.method == "HEAD":
        return Response(status_code=200, headers={"Upload-Offset": "3", "Vary": "Accept"})
    raise GatewayError(ERR.UNAUTHORIZED, "a bearer token is required")


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug")


def app(origins: tuple[str, ...]) -> Starlette:
    return Starlette(
        routes=[
            Route("/files/", tus_endpoint, methods=["POST", "OPTIONS", "HEAD"]),
            Route("/boom", boom, methods=["GET"]),
        ],
        middleware=[
            Middleware(CorsMiddleware, origins=origins),
            Middleware(AccessMiddleware),
            Middleware(PreflightMiddleware, origins=origins),
            Middleware(HttpRulesMiddleware),
            Middleware(TusMiddleware),
        ],
        exception_handlers={GatewayError: _problem},
    )


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return Response(b"{}", status_code=exc.status, media_type="application/problem+json")


async def call(
    origins: tuple[str, ...], method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app(origins))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        return await client.request(method, path, headers=headers)


def preflight(origin: str, method: str = "PATCH") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": TUS_REQUEST_HEADERS,
    }


def listed(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",")}


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS"])
async def test_preflight_of_an_allowed_origin(method: str) -> None:
    # Even on a path that has no OPTIONS route: the preflight never reaches the routes.
    for path in ("/files/", "/files/AbCdEfGhIjKlMnOpQrStUv", "/boom"):
        response = await call((PACS,), "OPTIONS", path, preflight(PACS, method))
        assert response.status_code == 204, response.text
        h = response.headers
        assert h["access-control-allow-origin"] == PACS
        assert method.lower() in listed(h["access-control-allow-methods"])
        assert listed(TUS_REQUEST_HEADERS) <= listed(h["access-control-allow-headers"])
        assert listed(h["access-control-allow-headers"]) == {n.lower() for n in ALLOW_HEADERS}
        assert h["access-control-max-age"] == "86400"
        assert h["vary"] == "Origin"
        assert "access-control-allow-credentials" not in h
        assert "tus-resumable" not in h and "tus-version" not in h


async def test_preflight_of_another_origin_gets_no_allow_headers() -> None:
    for headers in (preflight(OTHER), preflight("null"), preflight(PACS + "/")):
        response = await call((PACS,), "OPTIONS", "/files/", headers)
        assert response.status_code == 403
        assert response.json()["code"] == "ERR_ORIGIN_NOT_ALLOWED"
        assert not [k for k in response.headers if k.startswith("access-control-")]
        assert response.headers["vary"] == "Origin"
        assert "x-request-id" in response.headers  # answered inside the access log


async def test_tus_discovery_from_a_page_is_not_a_preflight() -> None:
    # tus's OPTIONS carries no Access-Control-Request-Method: the tus handler answers it.
    response = await call((PACS,), "OPTIONS", "/files/", {"Origin": PACS})
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["access-control-allow-origin"] == PACS
    assert "tus-version" in listed(response.headers["access-control-expose-headers"])


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("HEAD", "/files/", {}, 200),
        ("POST", "/files/", {}, 401),  # a GatewayError through starlette's handler
        ("POST", "/files/", {"Transfer-Encoding": "gzip"}, 501),  # HttpRulesMiddleware
        ("POST", "/files/", {"X-HTTP-Method-Override": "TRACE"}, 400),  # TusMiddleware
        ("GET", "/boom", {}, 500),  # AccessMiddleware's answer to an unexpected error
        ("GET", "/nowhere", {}, 404),
    ],
)
async def test_every_response_of_an_allowed_origin_carries_cors(
    method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = await call((PACS,), method, path, {"Origin": PACS, **headers})
    assert response.status_code == status
    h = response.headers
    assert h["access-control-allow-origin"] == PACS
    assert listed(h["access-control-expose-headers"]) == {n.lower() for n in EXPOSE_HEADERS}
    assert "origin" in listed(h["vary"])
    assert len(h.get_list("vary")) == 1
    assert "access-control-allow-credentials" not in h


async def test_vary_keeps_what_the_app_said() -> None:
    response = await call((PACS,), "HEAD", "/files/", {"Origin": PACS})
    assert listed(response.headers["vary"]) == {"accept", "origin"}


async def test_responses_to_other_origins_carry_only_vary() -> None:
    for headers in ({"Origin": OTHER}, {}, {"Origin": "null"}):
        response = await call((PACS,), "POST", "/files/", headers)
        assert response.status_code == 401  # served as usual: CORS is the browser's rule
        assert not [k for k in response.headers if k.startswith("access-control-")]
        assert response.headers["vary"] == "Origin"


async def test_two_origin_lines_allow_nothing() -> None:
    transport = httpx.ASGITransport(app=app((PACS,)))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        response = await client.request(
            "HEAD", "/files/", headers=[("Origin", PACS), ("Origin", PACS)]
        )
    assert "access-control-allow-origin" not in response.headers


async def test_any_origin_is_answered_with_a_star_and_no_credentials() -> None:
    response = await call((ANY,), "OPTIONS", "/files/", preflight(OTHER))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    response = await call((ANY,), "POST", "/files/", {"Origin": "http://localhost:5173"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_no_origins_is_no_middleware() -> None:
    for middleware in (CorsMiddleware, PreflightMiddleware):
        with pytest.raises(ValueError, match="at least one origin"):
            middleware(app(()), origins=())
