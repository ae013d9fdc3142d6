"""A gateway app served inside the test process: the same requests, no server process.

For protocol tests that need no socket. `create_app` gets the store, catalog and keys
built here on a data dir; the app runs on an event loop in a background thread, its
lifespan entered there (httpx.ASGITransport does not run it), and a plain synchronous
httpx.Client reaches it through httpx.ASGITransport on that loop. A test module then
starts in milliseconds instead of spawning `gateway serve`. What depends on uvicorn
(connection handling, header limits, timeouts, exact request bytes) stays with
tests/server.py's GatewayProcess. (starlette's TestClient does the same, but warns
with the httpx we use.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.types import ASGIApp

from gateway.app import create_app, prepare_data_dir
from gateway.auth import mint_token
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import load_settings
from gateway.keys.keyring import LocalKeyring
from gateway.store.folder import FolderStore
from tests.tushttp import Tus, check_tus_resumable

BASE_URL = "http://testserver"  # no one listens there: requests go to the app directly
T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


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


@contextlib.contextmanager
def app_client(app: ASGIApp, lifespan: Any) -> Iterator[httpx.Client]:
    """An httpx.Client on `app`, served on a private event loop with `lifespan` entered
    around it (the app's `router.lifespan_context(app)`)."""
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
    """A Tus client on a fresh app over `data_dir` (folder store, SQLite catalog, local
    keyring), with absolute Location URLs like the black-box servers; `settings`
    override the defaults (GATEWAY_* in the environment are not read)."""
    config = load_settings({"data_dir": data_dir, "public_url": BASE_URL, **settings}, environ={})
    prepare_data_dir(config)
    catalog = SQLiteCatalog(config.catalog_path)  # the app's lifespan closes it
    token = mint_token(catalog, Principal("admin", "default"))
    app = create_app(
        config,
        store=FolderStore(config.objects_dir),
        catalog=catalog,
        keys=LocalKeyring.open(config.keyring_path),
    )
    with app_client(app, app.router.lifespan_context(app)) as client:
        yield Tus(AppGateway(data_dir, token), client)
