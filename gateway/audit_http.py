"""The audit log over HTTP: what requests append, and GET /audit for auditors.

Handlers `note` what a request does (`note(request, audit.UPLOAD_DOWNLOADED, id, ...)`);
`AuditMiddleware` appends it when the response starts, before the client sees it, with
the outcome its status gives (ok below 400, refused for 4xx, failed for 5xx) and the
error code. Refusals are recorded whatever the handler noted: a 401 for a request that
sent a token, any 403, and a 404 for an upload asked for by a known principal become
`access.refused`, with what was attempted.

    GET /audit?upload=&principal=&since=&until=&limit=&after=
        -> {"entries": [entry, ...], "next": seq | null}   (roles auditor or admin)

An auditor or an admin sees its tenant's entries (its principals' actions and those on
its uploads); others get 403. The whole log is the operator's (`gateway audit export`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import audit
from gateway.access import Action
from gateway.auditing import Audit
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import AuditCatalog, AuditQuery
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.middleware import route_of
from gateway.runner import Runner

_NOTES = "audit_notes"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_PARAMS = frozenset({"upload", "principal", "since", "until", "limit", "after"})


def note(
    request: Request,
    action: str,
    upload_id: str | None = None,
    *,
    settled: bool = False,
    upload_tenant: str | None = None,
    **details: audit.Detail,
) -> None:
    """Have the request's response append `action`; `settled`: it happened, whatever
    the status (an upload created by a POST whose body then failed). `upload_tenant`:
    the tenant the upload belongs to, once the request may know it."""
    notes: list[_Note] = request.scope.setdefault("state", {}).setdefault(_NOTES, [])
    notes.append(_Note(action, upload_id, settled, dict(details), upload_tenant))


class _Note(NamedTuple):
    action: str
    upload_id: str | None
    settled: bool
    details: dict[str, audit.Detail]
    upload_tenant: str | None


class AuditMiddleware:
    """Appends the request's audit entries as its response starts (inside the access
    log's middleware, which sets the request id)."""

    def __init__(self, app: ASGIApp, audit: Audit, base_path: str = "/files/") -> None:
        self.app = app
        self.audit = audit
        self.base_path = base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        started = False

        async def auditing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                await self._append(scope, state, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, auditing_send)
        except Exception:
            if not started:
                await self._append(scope, state, 500)
            else:
                for n in state.get(_NOTES, ()):
                    if n.action == audit.UPLOAD_DOWNLOADED:
                        # The body was cut short after a good start (a record failed
                        # its check).
                        await self._record(scope, state, n._replace(settled=False), 500)
            raise

    async def _append(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        notes: list[_Note] = state.get(_NOTES, [])
        refused = (
            status in (401, 403)
            or (status == 404 and state.get("principal") and state.get("upload_id"))
            or (status == 429 and state.get("error_code") == ERR.AUTH_THROTTLED.code)
        )
        if status == 401 and not any(k == b"authorization" for k, _ in scope["headers"]):
            refused = False  # no credentials at all: counted in metrics, not audited
        if refused:
            method = state.get("method", scope["method"])  # after X-HTTP-Method-Override
            attempted = notes[0].action if notes else f"{method} {self._route(scope)}"
            # No upload_tenant: a refusal never tells whose the upload is, or that it exists.
            refusal = _Note(
                audit.ACCESS_REFUSED, state.get("upload_id"), False, {"attempted": attempted}, None
            )
            await self._record(scope, state, refusal, status)
        for n in notes:
            if refused and not n.settled:
                continue
            await self._record(scope, state, n, 200 if n.settled else status)

    async def _record(self, scope: Scope, state: dict[str, Any], n: _Note, status: int) -> None:
        outcome = audit.OK if status < 400 else audit.REFUSED if status < 500 else audit.FAILED
        client = scope.get("client")
        actor = audit.Actor(
            principal=state.get("principal"),
            tenant=state.get("tenant"),
            client=client[0] if client else None,
            request_id=state.get("request_id"),
        )
        code = state.get("error_code") if status >= 400 else None
        await self.audit.record(
            n.action,
            actor,
            n.upload_id,
            outcome=outcome,
            code=code,
            details=n.details,
            upload_tenant=n.upload_tenant,
        )

    def _route(self, scope: Scope) -> str:
        path = scope["path"]
        return path if path == "/audit" else route_of(path, self.base_path)


class AuditHandler:
    def __init__(
        self, catalog: AuditCatalog, auth: Authenticator, runner: Runner, grants: Grants
    ) -> None:
        self._catalog = catalog
        self._auth = auth
        self._runner = runner
        self._grants = grants

    def routes(self) -> list[Route]:
        return [Route("/audit", self.query, methods=["GET"])]

    async def query(self, request: Request) -> Response:
        principal = await self._auth.principal(
            request.headers.getlist("authorization"), client=client_of(request)
        )
        request.state.principal = principal.id
        request.state.tenant = principal.tenant
        note(request, audit.AUDIT_QUERIED)
        # 403 without the auditor or admin role (or without MFA where the policy says so).
        self._grants.require(principal, Action.AUDIT)
        # Either role sees its own tenant's entries; the whole log is the operator's
        # (`gateway audit export` on the gateway's host).
        query = _query(request, tenant=principal.tenant)
        records = await self._runner.db(
            self._catalog.audit_records,
            dataclasses.replace(query, limit=query.limit + 1),
        )
        more = len(records) > query.limit
        records = records[: query.limit]
        return JSONResponse(
            {
                "entries": [json.loads(r.entry) for r in records],
                "next": records[-1].seq if more else None,
            },
            headers={"Cache-Control": "no-store"},
        )


def _query(request: Request, *, tenant: str | None) -> AuditQuery:
    params = request.query_params
    unknown = set(params.keys()) - _PARAMS
    if unknown:
        raise _bad(f"unknown parameter {sorted(unknown)[0]!r}; use {', '.join(sorted(_PARAMS))}")
    values: dict[str, str] = {}
    for name in params:
        given = params.getlist(name)
        if len(given) != 1 or not given[0] or len(given[0]) > 256:
            raise _bad(f"give {name} once, 1 to 256 characters")
        values[name] = given[0]
    try:
        since = audit.parse_time(values["since"]) if "since" in values else None
        until = audit.parse_time(values["until"]) if "until" in values else None
    except ValueError as exc:
        raise _bad(f"since and until are RFC 3339 times: {exc}") from None
    return AuditQuery(
        upload_id=values.get("upload"),
        principal=values.get("principal"),
        tenant=tenant,
        since=since,
        until=until,
        after=_integer(values, "after", 0, 0, 2**62),
        limit=_integer(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    )


def _integer(values: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = values.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise _bad(f"{name} is a whole number from {low} to {high}")
    return int(text)


def _bad(sentence: str) -> GatewayError:
    return GatewayError(ERR.INVALID_AUDIT_QUERY, sentence)
