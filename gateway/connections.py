"""uvicorn's httptools protocol, counting open client connections for tusd_connections_open."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import metrics


class CountingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        metrics.CONNECTIONS_OPEN.inc()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS_OPEN.dec()
        super().connection_lost(exc)
