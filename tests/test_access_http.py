"""Tenants, roles, grants and the MFA policy on every route, over HTTP to an in-process app.

The principals: alice and bob (uploaders of tenant north), eve (an uploader of south),
carol (a reader of south: a consultant), rita (a reader of north), audrey (an auditor of
north), root (an admin of north) and sam (an admin of south). A sign-in with a second
factor (an OIDC token: another module) is stood for by a test authenticator that marks
the principals of chosen tokens `mfa`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from gateway.auth import Authenticator, mint_token
from gateway.catalog.base import Principal
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import ConfigError, load_settings
from gateway.roles import ADMIN, AUDITOR, READER, UPLOADER
from tests.inprocess import app_client, build_app
from tests.tushttp import OCTET, assert_problem, upload_id

DATA = b"0123456789" * 100
PEOPLE = {
    "alice": Principal("alice", "north"),
    "bob": Principal("bob", "north", frozenset({UPLOADER})),
    "eve": Principal("eve", "south"),
    "carol": Principal("carol", "south", frozenset({READER})),
    "rita": Principal("rita", "north", frozenset({READER})),
    "audrey": Principal("audrey", "north", frozenset({AUDITOR})),
    "root": Principal("root", "north", frozenset({ADMIN})),
    "sam": Principal("sam", "south", frozenset({ADMIN})),
}


@dataclass
class Site:
    client: httpx.Client
    tokens: dict[str, str]
    data_dir: Path

    def h(self, who: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}", "Tus-Resumable": "1.0.0", **extra}

    def upload(self, who: str = "alice", data: bytes = DATA) -> str:
        headers = self.h(
            who,
            **{"Upload-Length": str(len(data)), "Content-Type": OCTET},
        )
        response = self.client.post("/files/", headers=headers, content=data)
        assert response.status_code == 201, response.text
        return upload_id(response.headers["Location"])

    def grant(self, uid: str, who: str, to: str, expires_in: int = 3600) -> httpx.Response:
        person = PEOPLE[to]
        body = {"principal": person.id, "tenant": person.tenant, "expires_in": expires_in}
        return self.client.post(f"/files/{uid}/grants", headers=self.h(who), json=body)

    def granted(self, uid: str, who: str, to: str) -> str:
        response = self.grant(uid, who, to)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def requests(self, uid: str, who: str) -> dict[str, httpx.Response]:
        """One request of each kind on the upload, as `who`."""
        h, c = self.h(who), self.client
        patch = {**h, "Upload-Offset": "0", "Content-Type": OCTET}
        return {
            "head": c.head(f"/files/{uid}", headers=h),
            "patch": c.patch(f"/files/{uid}", headers=patch, content=b"x"),
            "download": c.get(f"/files/{uid}", headers=h),
            "manifest": c.get(f"/files/{uid}/manifest", headers=h),
            "grants": c.get(f"/files/{uid}/grants", headers=h),
            "grant": self.grant(uid, who, "carol"),
            "delete": c.delete(f"/files/{uid}", headers=h),
        }


@contextlib.contextmanager
def _site(tmp_path: Path, mfa: Sequence[str] = (), **settings: object) -> Iterator[Site]:
    app, _ = build_app(tmp_path / "data", settings=settings)
    catalog = SQLiteCatalog(tmp_path / "data" / "catalog.sqlite3")
    try:
        tokens = {name: mint_token(catalog, p) for name, p in PEOPLE.items()}
        for name in mfa:
            tokens[f"{name}+mfa"] = mint_token(catalog, PEOPLE[name])
    finally:
        catalog.close()
    with app_client(app) as client:
        yield Site(client, tokens, tmp_path / "data")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with _site(tmp_path) as site:
        yield site


@pytest.fixture
def with_mfa(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Tokens whose sign-in counts as having shown a second factor."""
    marked: set[str] = set()
    original = Authenticator.principal

    async def principal(
        self: Authenticator, authorization: list[str], *, client: str = ""
    ) -> Principal:
        found = await original(self, authorization, client=client)
        token = authorization[0].split()[-1] if authorization else ""
        return replace(found, mfa=True) if token in marked else found

    monkeypatch.setattr(Authenticator, "principal", principal)
    return marked


def _codes(responses: dict[str, httpx.Response]) -> dict[str, tuple[int, str | None]]:
    def code(r: httpx.Response) -> str | None:
        if (
            r.request.method == "HEAD"
            or r.headers.get("content-type") != "application/problem+json"
        ):
            return None
        return str(r.json()["code"])

    return {kind: (r.status_code, code(r)) for kind, r in responses.items()}


NOT_FOUND = (404, "ERR_UPLOAD_NOT_FOUND")
FORBIDDEN = (403, "ERR_FORBIDDEN")


def test_another_tenant_or_principal_finds_nothing(site: Site) -> None:
    uid = site.upload()
    for who in ("bob", "eve"):
        for kind, got in _codes(site.requests(uid, who)).items():
            assert got in (NOT_FOUND, (404, None)), (who, kind, got)  # HEAD: no body
    # An admin of another tenant: no role for data, and its tenant's grants only.
    codes = _codes(site.requests(uid, "sam"))
    assert codes["grant"] == codes["grants"] == NOT_FOUND
    for kind in ("patch", "download", "manifest", "delete"):
        assert codes[kind] == FORBIDDEN, kind
    # The owner's upload is untouched and still its own.
    assert site.client.get(f"/files/{uid}", headers=site.h("alice")).content == DATA


def test_a_reader_without_a_grant_finds_nothing_and_may_not_upload(site: Site) -> None:
    uid = site.upload()
    for who in ("carol", "rita"):
        codes = _codes(site.requests(uid, who))
        assert codes["download"] == codes["manifest"] == NOT_FOUND, who
        for kind in ("patch", "grants", "grant", "delete"):
            assert codes[kind] == FORBIDDEN, (who, kind)
        assert codes["head"][0] == 403
    refused = site.client.post("/files/", headers=site.h("carol", **{"Upload-Length": "1"}))
    assert_problem(refused, 403, "ERR_FORBIDDEN")


def test_a_grant_lets_its_holder_download_and_fetch_the_manifest_only(site: Site) -> None:
    uid = site.upload()
    created = site.grant(uid, "alice", "carol", expires_in=7 * 86400)
    assert created.status_code == 201, created.text
    grant = created.json()
    assert grant["principal"] == "carol" and grant["tenant"] == "south"
    assert grant["granted_by"] == "north/alice" and grant["access"] == "read"
    assert created.headers["location"] == f"/files/{uid}/grants/{grant['id']}"
    reader = site.h("carol")
    assert site.client.get(f"/files/{uid}", headers=reader).content == DATA
    part = site.client.get(f"/files/{uid}", headers={**reader, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == DATA[10:20]
    manifest = site.client.get(
        f"/files/{uid}/manifest", headers={**reader, "Accept": "application/json"}
    )
    assert manifest.status_code == 200 and manifest.json()["upload"]["id"] == uid
    codes = _codes(site.requests(uid, "carol"))
    for kind in ("patch", "grants", "grant", "delete"):
        assert codes[kind] == FORBIDDEN, kind  # a reader's role never does these
    # An uploader holding a grant: download and manifest, the rest is not its upload.
    site.granted(uid, "alice", "eve")
    codes = _codes(site.requests(uid, "eve"))
    assert codes["download"][0] == codes["manifest"][0] == 200
    for kind in ("head", "patch", "grants", "grant", "delete"):
        assert codes[kind][0] == 404, kind
    # The owner sees the grants; nobody else but a tenant admin does.
    listed = site.client.get(f"/files/{uid}/grants", headers=site.h("alice"))
    assert [g["principal"] for g in listed.json()["grants"]] == ["carol", "eve"]
    assert site.client.get(f"/files/{uid}/grants", headers=site.h("root")).json() == listed.json()
    assert site.client.head(f"/files/{uid}", headers=site.h("alice")).status_code == 200


def test_revocation_takes_effect_at_once(site: Site) -> None:
    uid = site.upload()
    gid = site.granted(uid, "alice", "carol")
    url = f"/files/{uid}/grants/{gid}"
    assert site.client.get(f"/files/{uid}", headers=site.h("carol")).status_code == 200
    assert_problem(site.client.delete(url, headers=site.h("carol")), 403, "ERR_FORBIDDEN")
    assert_problem(site.client.delete(url, headers=site.h("bob")), 404, "ERR_UPLOAD_NOT_FOUND")
    revoked = site.client.delete(url, headers=site.h("alice"))
    assert revoked.status_code == 204 and revoked.content == b""
    for path in (f"/files/{uid}", f"/files/{uid}/manifest"):
        assert_problem(site.client.get(path, headers=site.h("carol")), 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(site.client.delete(url, headers=site.h("alice")), 404, "ERR_GRANT_NOT_FOUND")
    bad = f"/files/{uid}/grants/not-a-grant"
    assert_problem(site.client.delete(bad, headers=site.h("alice")), 404, "ERR_GRANT_NOT_FOUND")
    assert site.client.get(f"/files/{uid}/grants", headers=site.h("alice")).json() == {"grants": []}


def test_an_expired_grant_counts_for_nothing_at_once(site: Site) -> None:
    uid = site.upload()
    gid = site.granted(uid, "alice", "carol")
    assert site.client.get(f"/files/{uid}", headers=site.h("carol")).status_code == 200
    conn = sqlite3.connect(site.data_dir / "catalog.sqlite3")
    with conn:  # as if a week had passed
        conn.execute("UPDATE grants SET expires_at = expires_at - 3601 WHERE id = ?", (gid,))
    conn.close()
    for path in (f"/files/{uid}", f"/files/{uid}/manifest"):
        assert_problem(site.client.get(path, headers=site.h("carol")), 404, "ERR_UPLOAD_NOT_FOUND")
    assert site.client.get(f"/files/{uid}/grants", headers=site.h("alice")).json() == {"grants": []}


def test_a_grant_goes_with_its_upload(site: Site) -> None:
    uid = site.upload()
    site.granted(uid, "alice", "carol")
    assert site.client.delete(f"/files/{uid}", headers=site.h("alice")).status_code == 204
    assert_problem(
        site.client.get(f"/files/{uid}", headers=site.h("carol")), 404, "ERR_UPLOAD_NOT_FOUND"
    )
    conn = sqlite3.connect(site.data_dir / "catalog.sqlite3")
    try:
        assert conn.execute("SELECT COUNT(*) FROM grants").fetchone() == (0,)
    finally:
        conn.close()


def test_an_admin_of_the_tenant_manages_grants_but_reads_nothing(site: Site) -> None:
    uid = site.upload()
    gid = site.granted(uid, "root", "carol")
    assert site.client.get(f"/files/{uid}", headers=site.h("carol")).status_code == 200
    assert_problem(site.client.get(f"/files/{uid}", headers=site.h("root")), 403, "ERR_FORBIDDEN")
    assert_problem(site.grant(uid, "sam", "carol"), 404, "ERR_UPLOAD_NOT_FOUND")
    url = f"/files/{uid}/grants/{gid}"
    assert_problem(site.client.delete(url, headers=site.h("sam")), 404, "ERR_UPLOAD_NOT_FOUND")
    assert site.client.delete(url, headers=site.h("root")).status_code == 204


def test_bad_grant_requests_are_refused_with_a_code(site: Site) -> None:
    uid = site.upload()
    url = f"/files/{uid}/grants"
    for body in ({"principal": "carol"}, {"principal": "carol", "expires_in": 10}, [1]):
        refused = site.client.post(url, headers=site.h("alice"), json=body)
        assert_problem(refused, 400, "ERR_INVALID_GRANT")
    assert_problem(
        site.client.post(url, headers=site.h("alice"), content=b"{"), 400, "ERR_MALFORMED_REQUEST"
    )
    # A stranger learns nothing from a bad body either.
    assert_problem(
        site.client.post(url, headers=site.h("eve"), json=[1]), 404, "ERR_UPLOAD_NOT_FOUND"
    )
    unknown = "/files/" + "Zz" * 11 + "/grants"
    assert_problem(site.client.get(unknown, headers=site.h("alice")), 404, "ERR_UPLOAD_NOT_FOUND")
    assert_problem(site.client.get(url), 401, "ERR_UNAUTHORIZED")


def test_an_auditor_gets_manifests_of_its_tenant_never_data(site: Site) -> None:
    uid = site.upload()
    codes = _codes(site.requests(uid, "audrey"))
    assert codes["manifest"][0] == 200
    assert codes["download"] == FORBIDDEN
    for kind in ("head", "patch", "grants", "grant", "delete"):
        assert codes[kind][0] == 403, kind
    south = site.upload("eve")
    assert_problem(
        site.client.get(f"/files/{south}/manifest", headers=site.h("audrey")),
        404,
        "ERR_UPLOAD_NOT_FOUND",
    )


def test_readers_see_their_tenant_where_the_policy_says_so(tmp_path: Path) -> None:
    with _site(tmp_path, readers_see_tenant=True) as site:
        uid = site.upload()
        assert site.client.get(f"/files/{uid}", headers=site.h("rita")).content == DATA
        assert site.client.get(f"/files/{uid}/manifest", headers=site.h("rita")).status_code == 200
        assert_problem(
            site.client.get(f"/files/{uid}", headers=site.h("carol")), 404, "ERR_UPLOAD_NOT_FOUND"
        )
        assert_problem(
            site.client.head(f"/files/{uid}", headers=site.h("rita")), 403, "ERR_FORBIDDEN"
        )


def test_the_mfa_policy(tmp_path: Path, with_mfa: set[str]) -> None:
    with _site(tmp_path, mfa=["alice", "root"], require_mfa_for="download,grant,admin") as site:
        with_mfa.update({site.tokens["alice+mfa"], site.tokens["root+mfa"]})
        uid = site.upload()  # create and write need no second factor here
        refused = site.client.get(f"/files/{uid}", headers=site.h("alice"))
        body = assert_problem(refused, 403, "ERR_MFA_REQUIRED")
        assert "download" in str(body["detail"])
        assert site.client.get(f"/files/{uid}/manifest", headers=site.h("alice")).status_code == 200
        assert site.client.get(f"/files/{uid}", headers=site.h("alice+mfa")).content == DATA
        assert_problem(site.grant(uid, "alice", "carol"), 403, "ERR_MFA_REQUIRED")
        assert site.grant(uid, "alice+mfa", "carol").status_code == 201
        hold = f"/admin/holds/{uid}"
        assert_problem(site.client.get(hold, headers=site.h("root")), 403, "ERR_MFA_REQUIRED")
        assert site.client.get(hold, headers=site.h("root+mfa")).status_code == 200
        # A role missing is said first; a stranger without MFA learns nothing either.
        assert_problem(site.client.get(hold, headers=site.h("alice+mfa")), 403, "ERR_FORBIDDEN")
        assert_problem(
            site.client.get(f"/files/{uid}", headers=site.h("eve")), 403, "ERR_MFA_REQUIRED"
        )


def test_mfa_for_writing_covers_a_body_sent_with_the_creation(
    tmp_path: Path, with_mfa: set[str]
) -> None:
    with _site(tmp_path, mfa=["alice"], require_mfa_for="write") as site:
        with_mfa.add(site.tokens["alice+mfa"])
        created = site.client.post("/files/", headers=site.h("alice", **{"Upload-Length": "3"}))
        assert created.status_code == 201  # no body: creating only
        url = created.headers["Location"]
        with_body = site.h("alice", **{"Upload-Length": "3", "Content-Type": OCTET})
        refused = site.client.post("/files/", headers=with_body, content=b"abc")
        assert_problem(refused, 403, "ERR_MFA_REQUIRED")
        patch = {"Upload-Offset": "0", "Content-Type": OCTET}
        refused = site.client.patch(url, headers=site.h("alice", **patch), content=b"abc")
        assert_problem(refused, 403, "ERR_MFA_REQUIRED")
        done = site.client.patch(url, headers=site.h("alice+mfa", **patch), content=b"abc")
        assert done.status_code == 204
        assert site.upload("alice+mfa", b"xyz")


def test_an_unknown_mfa_action_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"GATEWAY_REQUIRE_MFA_FOR.*'downlod'"):
        load_settings({"require_mfa_for": "download,downlod"}, environ={})


def test_admin_routes_refuse_every_other_role(site: Site) -> None:
    uid = site.upload()
    for who in ("alice", "bob", "carol", "rita", "audrey"):
        for method in ("GET", "PUT", "DELETE"):
            refused = site.client.request(method, f"/admin/holds/{uid}", headers=site.h(who))
            assert_problem(refused, 403, "ERR_FORBIDDEN")
    assert site.client.get(f"/admin/holds/{uid}", headers=site.h("root")).status_code == 200


def test_only_uploaders_create(site: Site) -> None:
    for who in ("carol", "rita", "audrey", "root"):
        headers = site.h(who, **{"Upload-Length": "5"})
        assert_problem(site.client.post("/files/", headers=headers), 403, "ERR_FORBIDDEN")
    assert site.upload("bob")
