"""The app factory: the one place that picks implementations and wires them together."""

from __future__ import annotations

import contextlib
import hmac
import logging
import signal
import threading
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import logs, metrics
from gateway.admin import AdminHandler
from gateway.admin_tokens import TokenAdminHandler
from gateway.audit_http import AuditHandler, AuditMiddleware
from gateway.auth import client_of
from gateway.catalog.base import Catalog, CatalogFull, CatalogUnavailable
from gateway.config import Settings, load_settings
from gateway.cors import CorsMiddleware, PreflightMiddleware
from gateway.downloads import DownloadHandler
from gateway.errors import ERR, GatewayError
from gateway.grants_http import GrantHandler
from gateway.handler import TusHandler
from gateway.ietf.handler import IetfHandler
from gateway.keys.base import KeyProvider
from gateway.keys.providers import open_provider
from gateway.leases import Leases
from gateway.middleware import (
    AccessMiddleware,
    HttpRulesMiddleware,
    TusMiddleware,
    problem_body,
)
from gateway.opening import open_catalog, open_store, prepare_data_dir
from gateway.rules import catalog_unavailable, insufficient_storage
from gateway.store.base import InPlaceStore, ObjectStore, StoreFull
from gateway.ui import ui_routes
from gateway.wiring import build_services

log = logging.getLogger("gateway.app")


def create_app(
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    catalog: Catalog | None = None,
    keys: KeyProvider | None = None,
) -> Starlette:
    prepare_data_dir(settings)
    store = metrics.instrument(
        store if store is not None else open_store(settings),
        metrics.STORE_DURATION,
        metrics.operations(ObjectStore, InPlaceStore),
    )
    catalog = metrics.instrument(
        catalog if catalog is not None else open_catalog(settings),
        metrics.CATALOG_DURATION,
        metrics.operations(Catalog),
    )
    keys = keys if keys is not None else open_provider(settings)
    key_warnings = keys.warnings()
    for warning in key_warnings:
        log.warning("%s; a copy of the keyring file alone decrypts every upload", warning)
    services = build_services(settings, store=store, catalog=catalog, keys=keys)
    uploads, auth, runner = services.uploads, services.auth, services.runner
    grants = services.grants
    handler = TusHandler(settings, uploads, auth, grants)
    # Requests carrying Upload-Draft-Interop-Version go to the IETF handler, the rest to tus.
    ietf = IetfHandler(settings, uploads, auth, grants)
    downloads = DownloadHandler(
        settings,
        uploads=uploads,
        reader=services.reader,
        keys=keys,
        runner=runner,
        auth=auth,
        grants=grants,
    )
    admin = AdminHandler(catalog, auth, runner, grants)
    token_admin = TokenAdminHandler(catalog, keys, auth, runner, grants)
    sharing = GrantHandler(settings.base_path, grants, auth)
    audit_log = AuditHandler(catalog, auth, runner, grants)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {}
        for name, check in (
            ("catalog", catalog.check),
            ("store", store.check),
            ("keys", keys.check),
        ):
            try:
                await runner.io(check)
                checks[name] = "ok"
            except Exception as exc:  # any failure means not ready; say which part
                checks[name] = f"failed: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"ready": ready, "checks": checks, "warnings": key_warnings},
            status_code=200 if ready else 503,
        )

    async def metrics_endpoint(request: Request) -> Response:
        # Scrapers authenticate like any client, or with the dedicated metrics token.
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.metrics_token}"
        token_ok = settings.metrics_token and hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
        )
        if not token_ok:
            await auth.principal(
                request.headers.getlist("authorization"), client=client_of(request)
            )
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _stop_writers_on_signals(services.leases)
        await services.start()
        try:
            yield
        finally:
            await services.close()
            catalog.close()

    cors = _cors(settings)
    app = Starlette(
        routes=[
            *ietf.dispatch(handler.routes()),
            *downloads.routes(),
            *sharing.routes(),
            *admin.routes(),
            *token_admin.routes(),
            *audit_log.routes(),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *(ui_routes(settings) if settings.ui else []),
        ],
        middleware=[
            *cors[:1],
            Middleware(AccessMiddleware, base_path=settings.base_path),
            *cors[1:],
            Middleware(AuditMiddleware, audit=services.audit, base_path=settings.base_path),
            Middleware(HttpRulesMiddleware),
            Middleware(TusMiddleware),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            CatalogUnavailable: _catalog_unavailable,
            StoreFull: _store_full,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    # No 307 from "/files/<id>/" to "/files/<id>": tus clients do not follow redirects
    # for PATCH reliably, and the target would be built from the untrusted Host header.
    app.router.redirect_slashes = False
    app.state.uploads = uploads
    return app


def _cors(settings: Settings) -> list[Middleware]:
    """None without GATEWAY_CORS_ORIGINS. Else the CORS headers, outermost so every
    error carries them, then preflights, answered inside the access log."""
    origins = settings.cors_origin_list
    if not origins:
        return []
    return [
        Middleware(CorsMiddleware, origins=origins),
        Middleware(PreflightMiddleware, origins=origins),
    ]


def app_from_environment() -> Starlette:
    """The factory worker processes call: settings come from GATEWAY_* variables."""
    settings = load_settings()
    logs.setup(settings.log_level, json_lines=settings.log_format == "json")
    keys = open_provider(settings)
    keys.check()  # the parent checked too; refuse here as well rather than serve without keys
    return create_app(settings, keys=keys)


def _stop_writers_on_signals(leases: Leases) -> None:
    """On SIGTERM/SIGINT, running PATCHes stop reading at once, seal and record what
    they have, and answer 503; then the server's own handler drains as usual."""
    if threading.current_thread() is not threading.main_thread():
        return  # in-process test servers: no signals to chain
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: object, previous: object = previous) -> None:
            leases.stop_all()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    request.state.error_code = exc.code
    if exc.status >= 500:
        log.error("request failed: %s", exc.code, exc_info=exc.__cause__ or exc)
    # A refused body still arriving gets `Connection: close` (HttpRulesMiddleware) and
    # a bounded lingering close (gateway.connections).
    return _problem(exc)


async def _catalog_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("catalog unavailable: %s", type(exc.__cause__ or exc).__name__)
    err = insufficient_storage() if isinstance(exc, CatalogFull) else catalog_unavailable()
    request.state.error_code = err.code
    return _problem(err)


async def _store_full(request: Request, exc: Exception) -> Response:
    """A full disk met outside the calls that answer it themselves: 507, not 500."""
    log.warning("object store full")
    err = insufficient_storage()
    request.state.error_code = err.code
    return _problem(err)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = GatewayError(ERR.METHOD_NOT_ALLOWED, "this resource does not support that method")
        err.headers.update(exc.headers or {})
    else:
        err = GatewayError(ERR.NOT_FOUND, "there is nothing at this address")
    request.state.error_code = err.code
    return _problem(err)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error", exc_info=exc)
    request.state.error_code = ERR.INTERNAL.code
    return _problem(GatewayError(ERR.INTERNAL, "the server failed; the upload state is intact"))


def _problem(err: GatewayError) -> Response:
    return Response(
        problem_body(err),
        status_code=err.status,
        headers=err.headers,
        media_type="application/problem+json",
    )
