"""One signed POST to a hook: short timeouts, never a redirect followed, never a body
logged. The only module of the hooks that talks HTTP."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gateway.hooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign

USER_AGENT = "imaging-upload-gateway-hooks/1"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most `read_limit` bytes of it; empty when not asked for


class HookUnreachable(Exception):
    """No HTTP answer: refused, reset, timed out, or a TLS failure. The message is
    short and safe to log (no URL query, no body)."""


# A whole call ends after this many timeouts, whatever happens: a receiver trickling its
# answer a byte at a time never holds a delivery (or a creation) for long.
WHOLE_CALL = 2


def new_client(timeout: float) -> httpx.AsyncClient:
    """The hooks' client: `timeout` for connecting, each read and each write, and
    WHOLE_CALL times it for a whole call; no redirects (a 3xx is an answer like any
    other, never followed)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        headers={"User-Agent": USER_AGENT},
    )


async def post_signed(
    client: httpx.AsyncClient,
    url: str,
    body: str,
    *,
    secret: bytes,
    event_id: str,
    read_limit: int = 0,
    clock: Callable[[], float] = time.time,
) -> Answer:
    """POST `body` signed now; the status and up to `read_limit` bytes of the answer."""
    data = body.encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, data, int(clock())),
        EVENT_ID_HEADER: event_id,
    }
    limit = WHOLE_CALL * (client.timeout.read or 5.0)
    try:
        async with (
            asyncio.timeout(limit),
            client.stream("POST", url, content=data, headers=headers) as response,
        ):
            received = bytearray()
            if read_limit:
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) > read_limit:
                        break
            return Answer(response.status_code, bytes(received[: read_limit + 1]))
    except (httpx.TimeoutException, TimeoutError):
        raise HookUnreachable("timeout") from None
    except httpx.HTTPError as exc:
        raise HookUnreachable(type(exc).__name__) from None


def safe_url(url: str) -> str:
    """`url` without credentials, query or fragment: what logs and the CLI show."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
