"""The grants API: share one upload with another principal for a while.

    POST   /files/{id}/grants          {"principal": P, "tenant": T, "expires_in": s} -> 201
    GET    /files/{id}/grants                                                  -> 200 list
    DELETE /files/{id}/grants/{grant}                                          -> 204

For the upload's owner or an admin of its tenant; anyone else gets 404 as for an upload
that does not exist. Answers are JSON (`grants.describe`), errors problem+json.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import audit
from gateway.admin import json_body
from gateway.audit_http import note
from gateway.auth import Authenticator, client_of
from gateway.catalog.base import Principal
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants, describe
from gateway.signer import rfc3339
from gateway.tus.headers import is_valid_upload_id

log = logging.getLogger("gateway.grants")


class GrantHandler:
    def __init__(self, base_path: str, grants: Grants, auth: Authenticator) -> None:
        self._base = base_path
        self._grants = grants
        self._auth = auth

    def routes(self) -> list[Route]:
        return [
            Route(self._base + "{upload_id}/grants", self.collection, methods=["GET", "POST"]),
            Route(self._base + "{upload_id}/grants/{grant_id}", self.revoke, methods=["DELETE"]),
        ]

    async def collection(self, request: Request) -> Response:
        principal, upload_id = await self._start(request)
        if request.method == "GET":
            found = await self._grants.live(principal, upload_id)
            return JSONResponse(
                {"grants": [describe(g) for g in found]},
                headers={"Cache-Control": "no-store"},
            )
        body = await json_body(request)
        grant = await self._grants.grant(principal, upload_id, body)
        note(
            request,
            audit.GRANT_CREATED,
            upload_id,
            upload_tenant=principal.tenant,  # the owner's or its tenant admin's
            grant=grant.id,
            grantee=f"{grant.tenant}/{grant.principal}",
            expires_at=rfc3339(grant.expires_at),
        )
        log.info("grant made", extra={"upload_id": upload_id, "grant_id": grant.id})
        location = f"{self._base}{upload_id}/grants/{grant.id}"
        return JSONResponse(describe(grant), status_code=201, headers={"Location": location})

    async def revoke(self, request: Request) -> Response:
        principal, upload_id = await self._start(request)
        grant_id = request.path_params["grant_id"]
        await self._grants.revoke(principal, upload_id, grant_id)
        note(
            request, audit.GRANT_REVOKED, upload_id, upload_tenant=principal.tenant, grant=grant_id
        )
        log.info("grant revoked", extra={"upload_id": upload_id, "grant_id": grant_id})
        return Response(status_code=204)

    async def _start(self, request: Request) -> tuple[Principal, str]:
        principal = await self._auth.principal(
            request.headers.getlist("authorization"), client=client_of(request)
        )
        request.state.principal = principal.id
        request.state.tenant = principal.tenant
        upload_id = request.path_params["upload_id"]
        if not is_valid_upload_id(upload_id):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
        request.state.upload_id = upload_id
        return principal, upload_id
