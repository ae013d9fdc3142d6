"""The access policy (gateway/access.py): every role x action x relation to the upload."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway import access
from gateway.access import Action, Decision, Policy, decide
from gateway.catalog.base import Grant, Principal, UploadState
from gateway.errors import ERR, GatewayError
from gateway.roles import ADMIN, AUDITOR, READER, ROLES, UPLOADER
from tests.fakes import upload_row

NOW = 10_000.0
UPLOAD = upload_row("u1", owner="alice", tenant="north", state=UploadState.COMPLETE)
A, N, F = Decision.ALLOW, Decision.NOT_FOUND, Decision.FORBIDDEN
ALL = list(Action)
ON_UPLOAD = sorted(access.ON_UPLOAD)


def who(pid: str, tenant: str = "north", *roles: str, mfa: bool = False) -> Principal:
    return Principal(pid, tenant, frozenset(roles), mfa)


def grant_to(principal: Principal, expires_at: float = NOW + 60) -> Grant:
    return Grant("gr_x", UPLOAD.id, principal.id, principal.tenant, "north/alice", 0.0, expires_at)


# What each role may do to an upload, by its relation to it:
#   own: its owner; tenant: same tenant, not the owner; granted: a live grant, other tenant;
#   stranger: another tenant, no grant.
TABLE: dict[str, dict[str, dict[Action, Decision]]] = {
    UPLOADER: {
        "own": {a: A for a in ON_UPLOAD},
        "tenant": {a: N for a in ON_UPLOAD},
        "granted": {
            **{a: N for a in ON_UPLOAD},
            Action.DOWNLOAD: A,
            Action.MANIFEST: A,
        },
        "stranger": {a: N for a in ON_UPLOAD},
    },
    READER: {
        rel: {
            Action.WRITE: F,
            Action.HEAD: F,
            Action.DELETE: F,
            Action.GRANT: F,
            Action.DOWNLOAD: A if rel == "granted" else N,
            Action.MANIFEST: A if rel == "granted" else N,
        }
        for rel in ("own", "tenant", "granted", "stranger")
    },
    AUDITOR: {
        rel: {
            Action.WRITE: F,
            Action.HEAD: F,
            Action.DELETE: F,
            Action.GRANT: F,
            Action.DOWNLOAD: F,  # never plaintext, even with a grant
            Action.MANIFEST: N if rel == "stranger" else A,
        }
        for rel in ("own", "tenant", "granted", "stranger")
    },
    ADMIN: {
        rel: {
            Action.WRITE: F,
            Action.HEAD: F,
            Action.DELETE: F,
            Action.DOWNLOAD: F,
            Action.MANIFEST: F,
            Action.GRANT: A if rel in ("own", "tenant") else N,
        }
        for rel in ("own", "tenant", "granted", "stranger")
    },
}

# Actions on no upload: what each role may do at all.
WITHOUT_UPLOAD = {
    UPLOADER: {Action.CREATE: A, Action.ADMIN: F, Action.AUDIT: F},
    READER: {Action.CREATE: F, Action.ADMIN: F, Action.AUDIT: F},
    AUDITOR: {Action.CREATE: F, Action.ADMIN: F, Action.AUDIT: A},
    ADMIN: {Action.CREATE: F, Action.ADMIN: A, Action.AUDIT: A},
}


def _case(role: str, relation: str) -> tuple[Principal, list[Grant]]:
    if relation == "own":
        return who("alice", "north", role), []
    if relation == "tenant":
        return who("bob", "north", role), []
    principal = who("alice" if relation == "granted" else "eve", "south", role)
    return principal, [grant_to(principal)] if relation == "granted" else []


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("relation", ["own", "tenant", "granted", "stranger"])
@pytest.mark.parametrize("action", ON_UPLOAD)
def test_role_by_action_on_an_upload(role: str, relation: str, action: Action) -> None:
    principal, grants = _case(role, relation)
    got = decide(Policy(), principal, action, UPLOAD, grants, NOW)
    assert got == TABLE[role][relation][action]


@pytest.mark.parametrize("role", sorted(ROLES))
@pytest.mark.parametrize("action", sorted(set(ALL) - access.ON_UPLOAD))
def test_role_by_action_on_no_upload(role: str, action: Action) -> None:
    assert decide(Policy(), who("x", "north", role), action) == WITHOUT_UPLOAD[role][action]


def test_every_action_and_role_is_in_the_tables() -> None:
    assert set(TABLE) == set(WITHOUT_UPLOAD) == set(ROLES)
    for role in ROLES:
        for relation in TABLE[role].values():
            assert set(relation) == access.ON_UPLOAD
        assert set(WITHOUT_UPLOAD[role]) | access.ON_UPLOAD == set(ALL)


def test_no_role_acts_as_an_uploader() -> None:
    bare, uploader = who("alice"), who("alice", "north", UPLOADER)
    for action in ALL:
        assert decide(Policy(), bare, action, UPLOAD, (), NOW) == decide(
            Policy(), uploader, action, UPLOAD, (), NOW
        )


def test_roles_add_up() -> None:
    both = who("eve", "north", AUDITOR, READER)
    assert decide(Policy(), both, Action.MANIFEST, UPLOAD, (), NOW) == A  # as auditor
    assert decide(Policy(), both, Action.DOWNLOAD, UPLOAD, (), NOW) == N  # no grant
    assert decide(Policy(), both, Action.DOWNLOAD, UPLOAD, [grant_to(both)], NOW) == A


def test_readers_see_their_tenant_only_where_the_policy_says_so() -> None:
    reader = who("bob", "north", READER)
    outsider = who("bob", "south", READER)
    policy = Policy(readers_see_tenant=True)
    for action in (Action.DOWNLOAD, Action.MANIFEST):
        assert decide(Policy(), reader, action, UPLOAD, (), NOW) == N
        assert decide(policy, reader, action, UPLOAD, (), NOW) == A
        assert decide(policy, outsider, action, UPLOAD, (), NOW) == N


def test_a_grant_counts_only_live_and_for_whom_and_what_it_names() -> None:
    reader = who("carol", "south", READER)
    live = grant_to(reader)
    assert decide(Policy(), reader, Action.DOWNLOAD, UPLOAD, [live], NOW) == A
    expired = grant_to(reader, expires_at=NOW)
    assert decide(Policy(), reader, Action.DOWNLOAD, UPLOAD, [expired], NOW) == N
    for other in (
        replace(live, principal="dave"),
        replace(live, tenant="north"),  # same name in another tenant is someone else
        replace(live, upload_id="u2"),
    ):
        assert decide(Policy(), reader, Action.DOWNLOAD, UPLOAD, [other], NOW) == N


def test_missing_and_terminated_uploads_are_not_found() -> None:
    owner = who("alice")
    gone = replace(UPLOAD, state=UploadState.TERMINATED)
    for action in ON_UPLOAD:
        assert decide(Policy(), owner, action, None, (), NOW) == N
        assert decide(Policy(), owner, action, gone, (), NOW) == N


def test_mfa_policy() -> None:
    policy = Policy(mfa_for=frozenset({Action.DOWNLOAD, Action.ADMIN}))
    owner = who("alice")
    assert decide(policy, owner, Action.DOWNLOAD, UPLOAD, (), NOW) == Decision.MFA_REQUIRED
    assert decide(policy, replace(owner, mfa=True), Action.DOWNLOAD, UPLOAD, (), NOW) == A
    assert decide(policy, owner, Action.MANIFEST, UPLOAD, (), NOW) == A  # not named
    admin = who("root", "north", ADMIN)
    assert decide(policy, admin, Action.ADMIN) == Decision.MFA_REQUIRED
    assert decide(policy, replace(admin, mfa=True), Action.ADMIN) == A
    # A missing role is told first; MFA says nothing of any upload, so before 404.
    assert decide(policy, who("x", "north", AUDITOR), Action.DOWNLOAD) == F
    stranger = who("eve", "south")
    assert decide(policy, stranger, Action.DOWNLOAD, UPLOAD, (), NOW) == Decision.MFA_REQUIRED
    assert decide(policy, replace(stranger, mfa=True), Action.DOWNLOAD, UPLOAD, (), NOW) == N


@pytest.mark.parametrize(
    ("decision_of", "err"),
    [
        ((who("eve", "south"), Action.DOWNLOAD), ERR.UPLOAD_NOT_FOUND),
        ((who("x", "north", AUDITOR), Action.DOWNLOAD), ERR.FORBIDDEN),
        ((who("alice"), Action.DELETE), ERR.MFA_REQUIRED),
    ],
)
def test_check_raises_the_stable_codes(decision_of: tuple[Principal, Action], err: ERR) -> None:
    principal, action = decision_of
    policy = Policy(mfa_for=frozenset({Action.DELETE}))
    with pytest.raises(GatewayError) as caught:
        access.check(policy, principal, action, UPLOAD, (), NOW)
    assert caught.value.err == err
    access.check(Policy(), who("alice"), Action.DOWNLOAD, UPLOAD, (), NOW)  # allowed: no error


def test_require_checks_role_and_mfa_only() -> None:
    policy = Policy(mfa_for=frozenset({Action.HEAD}))
    access.require(Policy(), who("eve", "south"), Action.HEAD)  # the upload is not asked
    with pytest.raises(GatewayError) as caught:
        access.require(policy, who("eve", "south"), Action.HEAD)
    assert caught.value.err == ERR.MFA_REQUIRED
    with pytest.raises(GatewayError) as caught:
        access.require(Policy(), who("r", "north", READER), Action.CREATE)
    assert caught.value.err == ERR.FORBIDDEN


def test_parse_actions() -> None:
    assert access.parse_actions("") == frozenset()
    assert access.parse_actions(" Download, manifest ,,") == {Action.DOWNLOAD, Action.MANIFEST}
    with pytest.raises(ValueError, match="'downlaod'"):
        access.parse_actions("downlaod")


def test_a_principal_with_only_unknown_roles_may_do_nothing() -> None:
    # An identity provider's roles claim may carry names of its own: they give no rights
    # (only a principal with no role at all is an uploader).
    odd = who("alice", "north", "physician")
    for action in ALL:
        assert decide(Policy(), odd, action, UPLOAD, [grant_to(odd)], NOW) == F
