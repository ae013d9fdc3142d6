"""Who may do what: the access policy every route asks, as a pure function.

    decide(policy, principal, action, upload, grants, now) -> Decision

in three steps, each answering without looking further:

1. role: none of the principal's roles (`roles.effective`) can ever do `action`
   -> FORBIDDEN (403 ERR_FORBIDDEN). Says nothing about any upload.
2. MFA: `action` is in `policy.mfa_for` and the sign-in showed no second factor
   -> MFA_REQUIRED (403 ERR_MFA_REQUIRED). Says nothing about any upload either.
3. the upload: the principal stands in no relation to it that lets one of its roles
   do `action` (not its owner, no live grant, not of its tenant where a role sees
   the tenant's uploads) -> NOT_FOUND (404), exactly as for an upload that does not
   exist: a stranger learns nothing.

What each role may do, and on which uploads, is `CAN` and `_related`; docs/SECURITY.md
has it as tables.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.catalog.base import Grant, Principal, Upload, UploadState
from gateway.errors import ERR, GatewayError
from gateway.roles import ADMIN, AUDITOR, READER, UPLOADER, effective


class Action(enum.StrEnum):
    """What a request does; the values are the names GATEWAY_REQUIRE_MFA_FOR takes."""

    CREATE = "create"  # POST /files/ (a new upload, or a final concatenation)
    WRITE = "write"  # PATCH, and a body sent with the POST that creates
    HEAD = "head"  # HEAD /files/<id> (offset, length, metadata)
    DOWNLOAD = "download"  # GET /files/<id> (plaintext, with Range)
    MANIFEST = "manifest"  # GET /files/<id>/manifest
    DELETE = "delete"  # DELETE /files/<id>
    GRANT = "grant"  # POST, GET and DELETE /files/<id>/grants
    ADMIN = "admin"  # /admin/...: legal holds, tokens, key status
    AUDIT = "audit"  # GET /audit


# Actions on one upload: step 3 applies. The others need a role only.
ON_UPLOAD = frozenset(
    {
        Action.WRITE,
        Action.HEAD,
        Action.DOWNLOAD,
        Action.MANIFEST,
        Action.DELETE,
        Action.GRANT,
    }
)

# What each role can ever do (step 1); on which uploads is `_related` (step 3).
CAN: dict[str, frozenset[Action]] = {
    UPLOADER: frozenset(
        {
            Action.CREATE,
            Action.WRITE,
            Action.HEAD,
            Action.DOWNLOAD,
            Action.MANIFEST,
            Action.DELETE,
            Action.GRANT,
        }
    ),
    READER: frozenset({Action.DOWNLOAD, Action.MANIFEST}),
    AUDITOR: frozenset({Action.MANIFEST, Action.AUDIT}),
    ADMIN: frozenset({Action.ADMIN, Action.GRANT, Action.AUDIT}),
}

# What a live grant lets its holder do (with a role that can do it at all).
GRANTED = frozenset({Action.DOWNLOAD, Action.MANIFEST})


class Decision(enum.Enum):
    ALLOW = "allow"
    NOT_FOUND = "not found"
    FORBIDDEN = "forbidden"
    MFA_REQUIRED = "mfa required"


@dataclass(frozen=True)
class Policy:
    """The settings the decision depends on (GATEWAY_READERS_SEE_TENANT,
    GATEWAY_REQUIRE_MFA_FOR)."""

    readers_see_tenant: bool = False
    mfa_for: frozenset[Action] = frozenset()


def parse_actions(text: str) -> frozenset[Action]:
    """A comma list of action names ("download, manifest"); ValueError naming an unknown one."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    known = {a.value for a in Action}
    for name in names:
        if name not in known:
            raise ValueError(f"unknown action {name!r}; known: {', '.join(sorted(known))}")
    return frozenset(Action(name) for name in names)


def decide(
    policy: Policy,
    principal: Principal,
    action: Action,
    upload: Upload | None = None,
    grants: Sequence[Grant] = (),
    now: float | None = None,
) -> Decision:
    """May `principal` do `action` (to `upload`, whose grants are `grants`)?

    `upload` None for an action on an upload means there is no such upload. `grants`
    need only hold the upload's grants to this principal; expired ones are ignored.
    """
    gate = _gate(policy, principal, action)
    if gate is not None or action not in ON_UPLOAD:
        return gate or Decision.ALLOW
    roles = effective(principal.roles)
    if upload is None or upload.state == UploadState.TERMINATED:
        return Decision.NOT_FOUND
    when = time.time() if now is None else now
    granted = any(_grants(g, principal, upload, when) for g in grants)
    for role in roles:
        if action in CAN.get(role, frozenset()) and _related(
            policy, role, action, principal, upload, granted
        ):
            return Decision.ALLOW
    return Decision.NOT_FOUND


def _gate(policy: Policy, principal: Principal, action: Action) -> Decision | None:
    """Steps 1 and 2: a refusal whatever the upload, or None."""
    if not any(action in CAN.get(role, frozenset()) for role in effective(principal.roles)):
        return Decision.FORBIDDEN
    if action in policy.mfa_for and not principal.mfa:
        return Decision.MFA_REQUIRED
    return None


def _related(
    policy: Policy,
    role: str,
    action: Action,
    principal: Principal,
    upload: Upload,
    granted: bool,
) -> bool:
    """Whether `role` lets `principal` do `action` to this upload (the role can do it)."""
    same_tenant = upload.tenant == principal.tenant
    if granted and action in GRANTED:
        return True
    if role == UPLOADER:
        return same_tenant and upload.owner == principal.id
    if role == READER:
        return same_tenant and policy.readers_see_tenant
    if role == AUDITOR:
        return same_tenant  # manifests of its tenant's uploads
    if role == ADMIN:
        return same_tenant  # grants on its tenant's uploads
    return False


def _grants(grant: Grant, principal: Principal, upload: Upload, now: float) -> bool:
    return (
        grant.upload_id == upload.id
        and grant.principal == principal.id
        and grant.tenant == principal.tenant
        and grant.expires_at > now
    )


def check(
    policy: Policy,
    principal: Principal,
    action: Action,
    upload: Upload | None = None,
    grants: Sequence[Grant] = (),
    now: float | None = None,
) -> None:
    """`decide`, raising the GatewayError a refusal is answered with."""
    _raise(decide(policy, principal, action, upload, grants, now), action)


def require(policy: Policy, principal: Principal, action: Action) -> None:
    """Steps 1 and 2 only (role, MFA), before any upload is looked up: for actions on
    no upload, and for the routes whose services check the owner themselves."""
    _raise(_gate(policy, principal, action) or Decision.ALLOW, action)


def _raise(decision: Decision, action: Action) -> None:
    if decision == Decision.ALLOW:
        return
    if decision == Decision.NOT_FOUND:
        raise GatewayError(ERR.UPLOAD_NOT_FOUND, "no such upload")
    if decision == Decision.MFA_REQUIRED:
        raise GatewayError(
            ERR.MFA_REQUIRED,
            f"'{action}' requires a sign-in with a second factor (MFA): sign in through "
            "the identity provider with MFA",
        )
    raise GatewayError(ERR.FORBIDDEN, f"none of this principal's roles may '{action}'")
