"""A gateway app served inside the test process: the same requests, no server process.

For protocol tests that need no socket. `build_app` calls `create_app` with the store,
catalog and keys built here on a data dir (or a store the test gives). Async tests talk
to it through httpx.ASGITransport (`async_app_client`, which enters the app's lifespan:
the transport does not). Synchronous tests get a plain httpx.Client (`app_client`): the
app runs on an event loop in a background thread, its lifespan entered there, and each
request is handed to the ASGI transport on that loop. A test module then starts in
milliseconds instead of spawning `gateway serve`. What depends on uvicorn
(connection handling, header limits, timeouts, exact request bytes) stays with
tests/server.py's GatewayProcess. (starlette's TestClient does the same, but warns
with the httpx we use.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.auth import mint_token
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import load_settings
from gateway.keys.keyring import open_configured
from gateway.opening import prepare_data_dir
from gateway.store.base import ObjectStore
from gateway.store.folder import FolderStore
from tests.tushttp import Tus, check_tus_resumable

BASE_URL = "http://testserver"  # no one listens there: requests go to the app directly
T = TypeVar("T")


@dataclass
class AppGateway:
    """What tests use of a GatewayProcess (URLs, auth, data dir), for an in-process app."""

    data_dir: Path
    token: str
    url: str = BASE_URL
    port: int = 80  # the port BASE_URL names, for request heads that need a Host

    @property
    def files_url(self) -> str:
        return f"{self.url}/files/"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Tus-Resumable": "1.0.0"}


class _ThreadedASGI(httpx.BaseTransport):
    """A synchronous transport: each request goes to the app on the loop's thread."""

    def __init__(self, app: ASGIApp, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._app = httpx.ASGITransport(app=app)
        self._run = run

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        # The request as it is: headers untouched (no Content-Length added to a
        # chunked one), the body as one stream.
        forward = httpx.Request(
            request.method, request.url, headers=request.headers, stream=httpx.ByteStream(body)
        )

        async def send() -> tuple[int, httpx.Headers, bytes]:
            response = await self._app.handle_async_request(forward)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = self._run(send())
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))


def build_app(
    data_dir: Path,
    *,
    store: ObjectStore | None = None,
    settings: Mapping[str, object] | None = None,
) -> tuple[Starlette, str]:
    """`create_app` over `data_dir`: the given store (default: the folder store), the
    SQLite catalog and the local keyring; absolute Location URLs like the black-box
    servers. `settings` override the defaults (GATEWAY_* variables are not read).
    Returns the app and a bearer token."""
    overrides = {"data_dir": data_dir, "public_url": BASE_URL, **(settings or {})}
    config = load_settings(overrides, environ={})
    prepare_data_dir(config)
    catalog = SQLiteCatalog(config.catalog_path)  # the app's lifespan closes it
    token = mint_token(catalog, Principal("admin", "default"))
    app = create_app(
        config,
        store=store if store is not None else FolderStore(config.objects_dir),
        catalog=catalog,
        keys=open_configured(config),
    )
    return app, token


@contextlib.asynccontextmanager
async def async_app_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """For async tests: an httpx.AsyncClient on `app` on the test's loop, lifespan entered."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=30
        ) as client,
    ):
        yield client


@contextlib.contextmanager
def app_client(app: Starlette) -> Iterator[httpx.Client]:
    """For synchronous tests: an httpx.Client on `app`, which runs on a private event
    loop in a thread, its lifespan entered there; every response is checked for
    Tus-Resumable."""
    lifespan = app.router.lifespan_context(app)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asgi-app", daemon=True)
    thread.start()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    try:
        run(lifespan.__aenter__())
        try:
            with httpx.Client(
                transport=_ThreadedASGI(app, run),
                base_url=BASE_URL,
                timeout=30,
                event_hooks={"response": [check_tus_resumable]},
            ) as client:
                yield client
        finally:
            run(lifespan.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def app_tus(data_dir: Path, **settings: object) -> Iterator[Tus]:
    """A Tus client on a fresh app over `data_dir` (see build_app)."""
    app, token = build_app(data_dir, settings=settings)
    with app_client(app) as client:
        yield Tus(AppGateway(data_dir, token), client)
