"""The admin API: legal holds over HTTP, for principals whose token has the admin role.

    PUT    /admin/holds/{id}   body {"case": "LIT-2026-0042"} (or {} / no body)  -> 200 hold
    GET    /admin/holds/{id}                                                   -> 200 hold
    DELETE /admin/holds/{id}                                                   -> 200 hold

Answers are JSON (`holds.describe`); errors are problem+json: 401 without a valid token,
403 `ERR_FORBIDDEN` for a token without the admin role (`ERR_MFA_REQUIRED` where the
MFA policy names `admin`), 404 for an unknown upload or one of another tenant: an
admin holds its own tenant's uploads (the operator's `gateway hold` reaches every one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import audit, holds
from gateway.access import Action
from gateway.audit_http import note
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import Principal
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.runner import Runner
from gateway.tus.headers import is_valid_upload_id

MAX_BODY = 1024
log = logging.getLogger("gateway.admin")


class AdminHandler:
    def __init__(
        self,
        catalog: holds.HoldingCatalog,
        auth: Authenticator,
        runner: Runner,
        grants: Grants,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._auth = auth
        self._runner = runner
        self._grants = grants
        self._clock = clock

    def routes(self) -> list[Route]:
        return [Route("/admin/holds/{upload_id}", self.hold, methods=["GET", "PUT", "DELETE"])]

    async def hold(self, request: Request) -> Response:
        admin = await self._admin(request)
        upload_id = request.path_params["upload_id"]
        if not is_valid_upload_id(upload_id):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        request.state.upload_id = upload_id
        if request.method == "PUT":
            case = holds.check_case(_case_of(await json_body(request)))
            note(request, audit.HOLD_PLACED, upload_id, case=case)
            hold = await self._runner.db(
                holds.place,
                self._catalog,
                upload_id,
                case=case,
                placed_by=f"{admin.tenant}/{admin.id}",
                now=self._clock(),
                tenant=admin.tenant,
            )
            log.info("legal hold placed", extra={"upload_id": upload_id, "case": case})
            return JSONResponse(holds.describe(upload_id, hold))
        if request.method == "DELETE":
            note(request, audit.HOLD_LIFTED, upload_id)
            if await self._runner.db(holds.release, self._catalog, upload_id, tenant=admin.tenant):
                log.info("legal hold released", extra={"upload_id": upload_id})
            return JSONResponse(holds.describe(upload_id, None))
        current = await self._runner.db(
            holds.current, self._catalog, upload_id, tenant=admin.tenant
        )
        return JSONResponse(holds.describe(upload_id, current))

    async def _admin(self, request: Request) -> Principal:
        return await admin_principal(request, self._auth, self._grants)


async def admin_principal(request: Request, auth: Authenticator, grants: Grants) -> Principal:
    """The request's principal, noted for the access log and the audit log; 401 without
    a valid credential, 403 without the admin role (or without MFA where required)."""
    principal = await auth.principal(
        request.headers.getlist("authorization"), client=client_of(request)
    )
    request.state.principal = principal.id
    request.state.tenant = principal.tenant
    grants.require(principal, Action.ADMIN)
    return principal


async def json_body(request: Request) -> object:
    """The request's JSON body (None if empty), read up to MAX_BODY bytes."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise GatewayError(ERR.MALFORMED_REQUEST, f"the body is over {MAX_BODY} bytes")
    except ClientDisconnect:
        raise GatewayError(ERR.MALFORMED_REQUEST, "the body ended before it was whole") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError(ERR.MALFORMED_REQUEST, "the body is not JSON") from None


def _case_of(body: object) -> object:
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) - {"case"}:
        raise GatewayError(ERR.MALFORMED_REQUEST, 'send a JSON object {"case": "<reference>"}')
    return body.get("case")
