"""Sharing one upload: grants of read access, and the check every read of an upload makes.

A grant lets one principal (possibly of another tenant: a consultant) download an upload
and fetch its manifest until it expires, nothing else. Only the upload's owner or an
admin of its tenant may grant, list and revoke. Nothing is cached: every read asks the
catalog, so an expiry or a revocation takes effect on the next request, in every process.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from gateway import access
from gateway.access import Action
from gateway.catalog.base import Grant, GrantCatalog, Principal, Upload
from gateway.errors import ERR, GatewayError
from gateway.runner import Runner
from gateway.signer import rfc3339

MIN_EXPIRES_IN = 60  # seconds
MAX_EXPIRES_IN = 90 * 24 * 3600
MAX_NAME = 256  # characters of a principal id or tenant
GRANT_ID = re.compile(r"gr_[A-Za-z0-9_-]{22}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class GrantingCatalog(GrantCatalog, Protocol):
    def get_upload(self, upload_id: str) -> Upload | None: ...


class Grants:
    """Grants, and `authorize`: the access policy applied to one upload, with its grants."""

    def __init__(
        self,
        catalog: GrantingCatalog,
        runner: Runner,
        policy: access.Policy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self.policy = policy
        self._clock = clock

    def require(self, principal: Principal, action: Action) -> None:
        """Role and MFA only (see `access.require`)."""
        access.require(self.policy, principal, action)

    async def authorize(self, principal: Principal, action: Action, upload_id: str) -> Upload:
        """The upload, if `principal` may do `action` to it; else 404 or 403 (access.py)."""
        self.require(principal, action)  # refused before any lookup
        upload = await self._runner.db(self._catalog.get_upload, upload_id)
        now = self._clock()
        grants: list[Grant] = []
        if upload is not None and action in access.GRANTED and not _owns(principal, upload):
            grants = await self._runner.db(self._catalog.grants, upload_id, now)
        access.check(self.policy, principal, action, upload, grants, now)
        assert upload is not None  # check() refuses a missing upload
        return upload

    async def grant(self, granter: Principal, upload_id: str, body: object) -> Grant:
        await self.authorize(granter, Action.GRANT, upload_id)
        principal, tenant, expires_in = parse_request(body, granter)
        now = self._clock()
        grant = Grant(
            id="gr_" + secrets.token_urlsafe(16),
            upload_id=upload_id,
            principal=principal,
            tenant=tenant,
            granted_by=f"{granter.tenant}/{granter.id}",
            created_at=now,
            expires_at=now + expires_in,
        )
        if not await self._runner.db(self._catalog.add_grant, grant):
            raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")  # removed meanwhile
        return grant

    async def live(self, principal: Principal, upload_id: str) -> list[Grant]:
        """The upload's grants that have not expired."""
        await self.authorize(principal, Action.GRANT, upload_id)
        return await self._runner.db(self._catalog.grants, upload_id, self._clock())

    async def revoke(self, principal: Principal, upload_id: str, grant_id: str) -> None:
        await self.authorize(principal, Action.GRANT, upload_id)
        if not GRANT_ID.fullmatch(grant_id) or not await self._runner.db(
            self._catalog.revoke_grant, upload_id, grant_id
        ):
            raise GatewayError(ERR.GRANT_NOT_FOUND, "this upload has no such grant")


def parse_request(body: object, granter: Principal) -> tuple[str, str, int]:
    """(principal, tenant, expires_in) from a grant request's JSON body; 400
    ERR_INVALID_GRANT naming what is wrong. The tenant defaults to the granter's."""
    if not isinstance(body, dict):
        raise _invalid('send a JSON object {"principal": ..., "expires_in": <seconds>}')
    unknown = set(body) - {"principal", "tenant", "expires_in", "access"}
    if unknown:
        raise _invalid(f"unknown field {sorted(unknown)[0]!r}")
    if body.get("access", "read") != "read":
        raise _invalid('"access" can only be "read"')
    principal = _name(body.get("principal"), "principal")
    tenant = _name(body.get("tenant", granter.tenant), "tenant")
    expires_in = body.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool):
        raise _invalid('"expires_in" (whole seconds) is required')
    if not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN:
        raise _invalid(
            f'"expires_in" must be between {MIN_EXPIRES_IN} and {MAX_EXPIRES_IN} seconds (90 days)'
        )
    return principal, tenant, expires_in


def describe(grant: Grant) -> dict[str, object]:
    """The JSON the grants API answers."""
    return {
        "id": grant.id,
        "upload_id": grant.upload_id,
        "principal": grant.principal,
        "tenant": grant.tenant,
        "access": "read",
        "granted_by": grant.granted_by,
        "created_at": rfc3339(grant.created_at),
        "expires_at": rfc3339(grant.expires_at),
    }


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise _invalid(f'"{field}" must be a non-empty string of at most {MAX_NAME} characters')
    if _CONTROL.search(value) or value != value.strip():
        raise _invalid(f'"{field}" must not hold control characters or surrounding spaces')
    return value


def _owns(principal: Principal, upload: Upload) -> bool:
    return upload.owner == principal.id and upload.tenant == principal.tenant


def _invalid(sentence: str) -> GatewayError:
    return GatewayError(ERR.INVALID_GRANT, sentence)
