"""The admin API for a tenant's API keys and the gateway's key status.

    GET    /admin/tokens                                     -> 200 {"keys": [key, ...]}
    POST   /admin/tokens {"principal": "pacs-2", "roles": ["uploader"], "expires_in": s}
                                                              -> 201 {key..., "token": "gwt_..."}
    DELETE /admin/tokens/{id}                                -> 204
    GET    /admin/keys                                       -> 200 key status

For principals with the admin role (403 `ERR_FORBIDDEN` otherwise), on their own
tenant's keys only: another tenant's key id answers 404 `ERR_TOKEN_NOT_FOUND`. A key is
shown once, in the answer that creates it; lists show what `gateway token list` shows.
`expires_in` (seconds, 60 to 3660 days) may be null or left out: a key that never
expires. A bad body is 400 `ERR_INVALID_TOKEN_REQUEST`. The key status names the KEK,
the published signing keys (the current one marked) and what weakens the keys'
protection; never key material.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import audit
from gateway.admin import admin_principal, json_body
from gateway.audit_http import note
from gateway.auth import Authenticator, describe_key, mint_api_key, rfc3339_seconds
from gateway.catalog.base import Principal, TokenStore
from gateway.errors import ERR, GatewayError
from gateway.grants import Grants
from gateway.keys.base import KeyProvider, KeyUnusable
from gateway.roles import ROLES
from gateway.runner import Runner

MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 3660 * 86400
MAX_NAME = 256
log = logging.getLogger("gateway.admin")


class TokenAdminHandler:
    def __init__(
        self,
        catalog: TokenStore,
        keys: KeyProvider,
        auth: Authenticator,
        runner: Runner,
        grants: Grants,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._keys = keys
        self._auth = auth
        self._runner = runner
        self._grants = grants
        self._clock = clock

    def routes(self) -> list[Route]:
        return [
            Route("/admin/tokens", self.collection, methods=["GET", "POST"]),
            Route("/admin/tokens/{token_id}", self.revoke, methods=["DELETE"]),
            Route("/admin/keys", self.key_status, methods=["GET"]),
        ]

    async def collection(self, request: Request) -> Response:
        admin = await self._admin(request)
        if request.method == "GET":
            keys = await self._runner.db(self._catalog.api_keys)
            mine = [describe_key(k) for k in keys if k.principal.tenant == admin.tenant]
            return JSONResponse({"keys": mine}, headers={"Cache-Control": "no-store"})
        principal, expires_in = parse_request(await json_body(request), admin.tenant)
        now = self._clock()
        expires_at = None if expires_in is None else now + expires_in
        token_id, token = await self._runner.db(
            mint_api_key, self._catalog, principal, expires_at=expires_at, now=now
        )
        note(
            request,
            audit.TOKEN_CREATED,
            key_id=token_id,
            roles=",".join(sorted(principal.roles)),
            expires_at=rfc3339_seconds(expires_at),
            subject=f"{principal.tenant}/{principal.id}",
        )
        log.info("API key created", extra={"key_id": token_id})
        created = await self._runner.db(self._catalog.api_keys)
        shown = next(describe_key(k) for k in created if k.id == token_id)
        return JSONResponse(
            {**shown, "token": token}, status_code=201, headers={"Cache-Control": "no-store"}
        )

    async def revoke(self, request: Request) -> Response:
        admin = await self._admin(request)
        token_id = request.path_params["token_id"]
        keys = await self._runner.db(self._catalog.api_keys)
        if not any(k.id == token_id and k.principal.tenant == admin.tenant for k in keys):
            raise GatewayError(ERR.TOKEN_NOT_FOUND, "no API key with this id in your tenant")
        note(request, audit.TOKEN_REVOKED, key_id=token_id)
        await self._runner.db(self._catalog.revoke_token, token_id, self._clock())
        log.info("API key revoked", extra={"key_id": token_id})
        return Response(status_code=204)

    async def key_status(self, request: Request) -> Response:
        await self._admin(request)
        try:
            await self._runner.io(self._keys.check)
            usable, problem = True, None
        except KeyUnusable as exc:
            usable, problem = False, str(exc)
        signing = await self._runner.io(self._keys.public_signing_keys)
        return JSONResponse(
            {
                "kek_id": self._keys.kek_id,
                "usable": usable,
                "problem": problem,
                "signing_keys": [
                    {"kid": k.kid, "alg": k.alg, "current": k.current} for k in signing
                ],
                "warnings": self._keys.warnings(),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _admin(self, request: Request) -> Principal:
        return await admin_principal(request, self._auth, self._grants)


def parse_request(body: object, tenant: str) -> tuple[Principal, float | None]:
    """(the key's principal in `tenant`, expires_in or None) from a POST body; 400
    ERR_INVALID_TOKEN_REQUEST naming what is wrong."""
    if not isinstance(body, dict):
        raise _invalid('send a JSON object {"principal": ..., "roles": [...], "expires_in": s}')
    unknown = set(body) - {"principal", "roles", "expires_in"}
    if unknown:
        raise _invalid(f"unknown members: {', '.join(sorted(unknown))}")
    name = body.get("principal")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME
        or name != name.strip()
        or not name.isprintable()
    ):
        raise _invalid(f'"principal" must be 1 to {MAX_NAME} printable characters')
    roles = body.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) and r in ROLES for r in roles):
        raise _invalid(f'"roles" must be a list of {", ".join(sorted(ROLES))}')
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN
    ):
        raise _invalid(f'"expires_in" must be whole seconds, {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN}')
    return Principal(name, tenant, frozenset(roles)), None if expires_in is None else expires_in


def _invalid(sentence: str) -> GatewayError:
    return GatewayError(ERR.INVALID_TOKEN_REQUEST, sentence)
