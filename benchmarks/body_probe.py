"""A bare ASGI app that reads and drops request bodies, noting how they reach it.

Served by uvicorn with the gateway's protocol (gateway/connections.py) or by Granian
(benchmarks/granian_edges.py starts both): what the HTTP layer alone costs per byte,
and the size and type of the body messages the app gets. Any request: 200 with JSON
`{"bytes", "messages", "types", "sizes": {"min", "median", "max"}}` of its body.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    sizes: list[int] = []
    types: set[str] = set()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body = message.get("body", b"")
        if body:
            sizes.append(len(body))
            types.add(type(body).__name__)
        more = message.get("more_body", False)
    result = {
        "bytes": sum(sizes),
        "messages": len(sizes),
        "types": sorted(types),
        "sizes": {
            "min": min(sizes, default=0),
            "median": statistics.median(sizes) if sizes else 0,
            "max": max(sizes, default=0),
        },
        "extensions": sorted(scope.get("extensions") or {}),
    }
    payload = json.dumps(result).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def uvicorn_main(port: int) -> None:
    """uvicorn + uvloop + the gateway's httptools protocol, default edge settings."""
    import uvicorn

    from gateway.config import Settings
    from gateway.connections import protocol_factory

    # uvicorn takes any protocol factory for `http` (gateway/cli.py passes the same).
    options: dict[str, Any] = {"http": protocol_factory(Settings())}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", ws="none",
                            lifespan="on", log_level="warning", **options)  # fmt: skip
    uvicorn.Server(config).run()


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    uvicorn_main(int(sys.argv[1]))
