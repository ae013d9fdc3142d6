"""The pre-create hook: before an upload is created (nothing stored yet), a signed POST
asks an external service whether to accept it. It answers 200 with {"accept": true} or
{"accept": false, "reason": "..."}; a refusal is 403 ERR_REJECTED_BY_HOOK with the
reason, and a hook that cannot be asked (unreachable, slow, any other answer) refuses
the upload too, with 503 ERR_HOOK_UNAVAILABLE and Retry-After: failing closed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import httpx

from gateway import metrics
from gateway.catalog.base import Principal
from gateway.errors import ERR, GatewayError
from gateway.hooks.events import new_event_id, pre_create_body
from gateway.hooks.http import HookUnreachable, post_signed, safe_url

log = logging.getLogger("gateway.hooks")
ANSWER_LIMIT = 16 * 1024  # bytes of the hook's answer read at most
REASON_LIMIT = 200  # characters of a refusal's reason passed to the client
RETRY_AFTER = "10"


class PreCreateHook:
    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._secret = secret
        self._client = client
        self._clock = clock

    async def check(
        self,
        principal: Principal,
        *,
        length: int | None,
        metadata: str | None,
        concat: str | None,
    ) -> None:
        """Return if the hook accepts the upload; GatewayError otherwise."""
        event_id = new_event_id()
        body = pre_create_body(
            event_id, self._clock(), principal, length=length, metadata=metadata, concat=concat
        )
        started = time.perf_counter()
        try:
            answer = await post_signed(
                self._client,
                self._url,
                body,
                secret=self._secret,
                event_id=event_id,
                read_limit=ANSWER_LIMIT,
                clock=self._clock,
            )
            problem = None if answer.status == 200 else f"HTTP {answer.status}"
        except HookUnreachable as exc:
            answer, problem = None, str(exc)
        verdict = None if answer is None or problem else _verdict(answer.body)
        outcome = "unavailable" if verdict is None else ("accepted" if verdict[0] else "rejected")
        metrics.HOOK_REQUEST_DURATION.labels(f"pre_create_{outcome}").observe(
            time.perf_counter() - started
        )
        metrics.HOOK_PRE_CREATE.labels(outcome).inc()
        if verdict is None:
            log.warning(
                "pre-create hook unavailable",
                extra={
                    "target": safe_url(self._url),
                    "error": problem or "malformed answer",
                    "principal": principal.id,
                },
            )
            raise GatewayError(
                ERR.HOOK_UNAVAILABLE,
                "the pre-create hook could not be asked; try again later",
                headers={"Retry-After": RETRY_AFTER},
            )
        accept, reason = verdict
        if not accept:
            raise GatewayError(
                ERR.REJECTED_BY_HOOK,
                f"rejected by the pre-create hook: {reason}"
                if reason
                else "rejected by the pre-create hook",
            )


def _verdict(body: bytes) -> tuple[bool, str] | None:
    """(accept, reason) from the hook's answer; None if it is not one."""
    if len(body) > ANSWER_LIMIT:
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("accept"), bool):
        return None
    reason = document.get("reason")
    return document["accept"], sanitize(reason) if isinstance(reason, str) else ""


def sanitize(reason: str) -> str:
    """The reason as the client may see it: printable characters only, whitespace runs
    as one space, at most REASON_LIMIT characters."""
    kept = "".join(c if c.isprintable() else " " for c in reason)
    text = " ".join(kept.split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"
