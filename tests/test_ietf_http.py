"""IETF resumable uploads over HTTP, request sequences from the drafts' examples, per version.

Each test runs for every interop version served (3 to 8) against an in-process app: the
drafts' example exchanges (creation with part of the content, offset retrieval, append,
completion, cancellation) and their error cases, checking each version's own fields,
statuses and problem types, and that what was sent is what is stored and downloaded.
The interrupted, resumed upload over a real socket is in test_ietf_wire.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.ietf import headers as fields
from gateway.ietf.versions import PROBLEM_BASE, SUPPORTED, VERSIONS, Version
from tests.conftest import read_stored
from tests.inprocess import AppGateway, app_client, build_app
from tests.tushttp import PROBLEM, upload_id

DATA = os.urandom(100)  # the drafts' examples upload 100 bytes, 25 of them at first


@dataclass
class Rufh:
    """A client of one interop version."""

    client: httpx.Client
    gateway: AppGateway
    version: Version

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.gateway.token}",
            fields.INTEROP_HEADER: str(self.version.number),
            **extra,
        }

    def complete(self, done: bool) -> dict[str, str]:
        return fields.complete_field(self.version, done)

    def append_type(self) -> dict[str, str]:
        return {"Content-Type": fields.PARTIAL_UPLOAD} if self.version.partial_upload_type else {}

    def create(self, content: bytes = b"", *, done: bool, **extra: str) -> httpx.Response:
        return self.client.post(
            self.gateway.files_url,
            headers=self.headers(**self.complete(done), **extra),
            content=content,
        )

    def created(self, content: bytes = b"", *, done: bool, **extra: str) -> str:
        response = self.create(content, done=done, **extra)
        assert response.status_code == 201, response.text
        return response.headers["Location"]

    def head(self, url: str, **extra: str) -> httpx.Response:
        return self.client.head(url, headers=self.headers(**extra))

    def append(
        self, url: str, offset: int, content: bytes | Iterator[bytes], *, done: bool, **extra: str
    ) -> httpx.Response:
        headers = {**self.append_type(), **self.complete(done), "Upload-Offset": str(offset)}
        return self.client.patch(url, headers=self.headers(**headers, **extra), content=content)

    def delete(self, url: str, **extra: str) -> httpx.Response:
        return self.client.delete(url, headers=self.headers(**extra))

    def is_complete(self, response: httpx.Response) -> bool:
        name = fields.complete_field_name(self.version)
        parsed = fields.parse_complete(self.version, [response.headers[name]])
        assert parsed is not None
        return parsed

    def download(self, url: str) -> bytes:
        response = self.client.get(url, headers=self.headers())
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture(scope="module")
def gateway_app(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AppGateway, httpx.Client]]:
    data_dir = tmp_path_factory.mktemp("ietf") / "data"
    app, token = build_app(data_dir, settings={"max_size": 1 << 20})
    with app_client(app) as client:
        yield AppGateway(data_dir, token), client


@pytest.fixture(params=SUPPORTED, ids=lambda n: f"v{n}")
def rufh(request: pytest.FixtureRequest, gateway_app: tuple[AppGateway, httpx.Client]) -> Rufh:
    gateway, client = gateway_app
    return Rufh(client, gateway, VERSIONS[request.param])


def problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """problem+json with this status and stable code; its type is the gateway's URN or,
    where the version registers one, the draft's problem type."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type") == PROBLEM, response.headers
    if response.request.method == "HEAD":
        return {}
    body: dict[str, object] = json.loads(response.content)
    assert body["code"] == code and body["status"] == status, body
    assert str(body["type"]).startswith((PROBLEM_BASE, f"urn:imaging-gateway:error:{code}")), body
    return body


# -- the drafts' examples ---------------------------------------------------------------


def test_creation_with_part_of_the_content_then_append_and_complete(rufh: Rufh) -> None:
    """Creation with 25 of 100 bytes (`Upload-Complete: ?0`), offset retrieval, then an
    append of the other 75 that completes the upload (the drafts' examples)."""
    created = rufh.create(DATA[:25], done=False, **{"Upload-Length": "100"})
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "25"
    assert not rufh.is_complete(created)
    url = created.headers["Location"]
    assert url.startswith(rufh.gateway.files_url)
    limit = "Upload-Limit" in created.headers
    assert limit == rufh.version.lengths_and_limits

    head = rufh.head(url)
    assert head.status_code == 204
    assert head.headers["Upload-Offset"] == "25"
    assert head.headers["Cache-Control"] == "no-store"
    assert not rufh.is_complete(head)
    if rufh.version.lengths_and_limits:
        assert head.headers["Upload-Length"] == "100"
        assert head.headers["Upload-Limit"].startswith(f"max-size={1 << 20}, ")
    else:
        assert "Upload-Length" not in head.headers

    appended = rufh.append(url, 25, DATA[25:], done=True)
    assert appended.status_code == rufh.version.append_status, appended.text
    assert appended.headers["Upload-Offset"] == "100"
    assert rufh.is_complete(appended)

    head = rufh.head(url)
    assert head.headers["Upload-Offset"] == "100" and rufh.is_complete(head)
    assert rufh.download(url) == DATA
    assert read_stored(rufh.gateway.data_dir, upload_id(url)) == DATA
    manifest = rufh.client.get(url + "/manifest", headers=rufh.headers())
    assert manifest.status_code == 200, manifest.text


def test_a_whole_upload_in_the_creation_request(rufh: Rufh) -> None:
    created = rufh.create(DATA, done=True)
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "100"
    assert rufh.is_complete(created)
    assert rufh.download(created.headers["Location"]) == DATA


def test_an_empty_creation_then_parts_of_unknown_total_length(rufh: Rufh) -> None:
    """Example 2 of the drafts: the URL first, then parts; the length is deferred until
    the completing append, sent chunked here (no Content-Length to take it from)."""
    url = rufh.created(done=False)
    head = rufh.head(url)
    assert head.headers["Upload-Offset"] == "0" and not rufh.is_complete(head)
    assert "Upload-Length" not in head.headers
    offset = 0
    for part in (DATA[:30], DATA[30:60]):
        response = rufh.append(url, offset, part, done=False)
        assert response.status_code == rufh.version.append_status, response.text
        offset += len(part)
        assert response.headers["Upload-Offset"] == str(offset)
        assert not rufh.is_complete(response)
    last = rufh.append(url, offset, iter([DATA[60:80], DATA[80:]]), done=True)
    assert last.status_code == rufh.version.append_status, last.text
    assert last.headers["Upload-Offset"] == "100" and rufh.is_complete(last)
    assert rufh.download(url) == DATA


def test_an_empty_append_completes_an_upload(rufh: Rufh) -> None:
    url = rufh.created(DATA, done=False)
    assert not rufh.is_complete(rufh.head(url))
    response = rufh.append(url, 100, b"", done=True)
    assert response.status_code == rufh.version.append_status, response.text
    assert rufh.is_complete(response)
    assert rufh.download(url) == DATA


def test_an_empty_upload(rufh: Rufh) -> None:
    created = rufh.create(done=True)
    assert created.status_code == 201 and rufh.is_complete(created)
    assert created.headers["Upload-Offset"] == "0"
    assert rufh.download(created.headers["Location"]) == b""


def test_cancellation(rufh: Rufh) -> None:
    url = rufh.created(DATA[:25], done=False)
    response = rufh.delete(url)
    assert response.status_code == 204, response.text
    problem(rufh.head(url), 404, "ERR_UPLOAD_NOT_FOUND")
    problem(rufh.append(url, 25, DATA[25:], done=True), 404, "ERR_UPLOAD_NOT_FOUND")


# -- errors -----------------------------------------------------------------------------


def test_a_mismatched_offset_is_409_with_the_expected_offset(rufh: Rufh) -> None:
    url = rufh.created(DATA[:25], done=False)
    response = rufh.append(url, 20, DATA[20:], done=True)
    body = problem(response, 409, "ERR_MISMATCHED_OFFSET")
    assert response.headers["Upload-Offset"] == "25"
    assert not rufh.is_complete(response)
    if rufh.version.number >= 6:
        assert body["type"] == PROBLEM_BASE + "mismatching-upload-offset"
        assert body["expected-offset"] == 25 and body["provided-offset"] == 20
    else:
        assert body["type"] == "urn:imaging-gateway:error:ERR_MISMATCHED_OFFSET"
    assert rufh.head(url).headers["Upload-Offset"] == "25"


def test_an_append_to_a_completed_upload(rufh: Rufh) -> None:
    url = rufh.created(DATA, done=True)
    more = rufh.append(url, 100, b"x", done=True)
    body = problem(more, 400, "ERR_UPLOAD_COMPLETED")
    if rufh.version.number >= 6:
        assert body["type"] == PROBLEM_BASE + "completed-upload"
    # A client that lost the completing response and retries it empty is answered again.
    again = rufh.append(url, 100, b"", done=True)
    assert again.status_code == rufh.version.append_status and rufh.is_complete(again)
    problem(rufh.append(url, 50, b"", done=True), 409, "ERR_MISMATCHED_OFFSET")
    assert rufh.download(url) == DATA


def test_inconsistent_lengths_are_refused(rufh: Rufh) -> None:
    # Upload-Length and a completing body of another length, in one request.
    response = rufh.create(DATA, done=True, **{"Upload-Length": "99"})
    body = problem(response, 400, "ERR_INCONSISTENT_UPLOAD_LENGTH")
    if rufh.version.number >= 7:
        assert body["type"] == PROBLEM_BASE + "inconsistent-upload-length"
    # A completing append that ends elsewhere than the length recorded at creation.
    url = rufh.created(DATA[:25], done=False, **{"Upload-Length": "100"})
    problem(rufh.append(url, 25, DATA[25:50], done=True), 400, "ERR_INCONSISTENT_UPLOAD_LENGTH")
    assert rufh.head(url).headers["Upload-Offset"] == "25"
    # Chunked, so the end is only known once the body is in: its bytes are kept.
    response = rufh.append(url, 25, iter([DATA[25:50]]), done=True)
    problem(response, 400, "ERR_INCONSISTENT_UPLOAD_LENGTH")
    assert response.headers["Upload-Offset"] == "50"
    assert not rufh.is_complete(rufh.head(url))


def test_a_body_past_the_length_is_refused(rufh: Rufh) -> None:
    response = rufh.create(DATA, done=False, **{"Upload-Length": "50"})
    problem(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
    too_big = rufh.create(b"", done=False, **{"Upload-Length": str((1 << 20) + 1)})
    problem(too_big, 413, "ERR_MAX_SIZE_EXCEEDED")


def test_offset_retrieval_and_cancellation_carry_no_upload_fields(rufh: Rufh) -> None:
    url = rufh.created(DATA[:25], done=False)
    forbidden = [{"Upload-Offset": "25"}, rufh.complete(False)]
    for extra in forbidden:
        problem(rufh.head(url, **extra), 400, "ERR_INVALID_HEADER")
        problem(rufh.delete(url, **extra), 400, "ERR_INVALID_HEADER")
    assert rufh.head(url).status_code == 204


def test_creation_needs_the_completion_field(rufh: Rufh) -> None:
    response = rufh.client.post(rufh.gateway.files_url, headers=rufh.headers(), content=DATA)
    problem(response, 400, "ERR_INVALID_UPLOAD_COMPLETE")
    response = rufh.create(DATA, done=False, **{"Upload-Offset": "0"})
    problem(response, 400, "ERR_INVALID_HEADER")


def test_an_append_without_the_completion_field(rufh: Rufh) -> None:
    url = rufh.created(DATA[:25], done=False, **{"Upload-Length": "100"})
    headers = rufh.headers(**rufh.append_type(), **{"Upload-Offset": "25"})
    response = rufh.client.patch(url, headers=headers, content=DATA[25:])
    if rufh.version.complete_required:  # -06 on
        problem(response, 400, "ERR_INVALID_UPLOAD_COMPLETE")
        return
    assert response.status_code == rufh.version.append_status, response.text
    # Version 3 reads it as the end; 4 to 6 do not, but the stated length is reached.
    assert rufh.is_complete(rufh.head(url))
    assert rufh.download(url) == DATA


def test_append_media_type(rufh: Rufh) -> None:
    url = rufh.created(DATA[:25], done=False)
    headers = rufh.headers(
        **rufh.complete(False), **{"Upload-Offset": "25", "Content-Type": "text/plain"}
    )
    response = rufh.client.patch(url, headers=headers, content=DATA[25:50])
    if rufh.version.partial_upload_type:  # -04 on
        problem(response, 415, "ERR_INVALID_CONTENT_TYPE")
        assert rufh.head(url).headers["Upload-Offset"] == "25"
    else:
        assert response.status_code == rufh.version.append_status


def test_authentication_is_required(rufh: Rufh) -> None:
    headers = {fields.INTEROP_HEADER: str(rufh.version.number), **rufh.complete(True)}
    response = rufh.client.post(rufh.gateway.files_url, headers=headers, content=DATA)
    problem(response, 401, "ERR_UNAUTHORIZED")


def test_options_announce_the_limits(rufh: Rufh) -> None:
    response = rufh.client.options(
        rufh.gateway.files_url, headers={fields.INTEROP_HEADER: str(rufh.version.number)}
    )
    assert response.status_code == 204
    if rufh.version.lengths_and_limits:
        age = "expires" if rufh.version.number == 6 else "max-age"
        assert response.headers["Upload-Limit"] == f"max-size={1 << 20}, {age}=604800"
        assert response.headers["Accept-Patch"] == fields.PARTIAL_UPLOAD
    else:
        assert "Upload-Limit" not in response.headers


# -- next to tus ------------------------------------------------------------------------


def test_an_ietf_upload_is_a_tus_upload(rufh: Rufh) -> None:
    """Same catalog row, same store: tus sees the upload, its offset and its metadata
    (from Content-Type and Content-Disposition), and can finish it."""
    url = rufh.created(
        DATA[:25],
        done=False,
        **{
            "Upload-Length": "100",
            "Content-Type": "application/dicom",
            "Content-Disposition": 'attachment; filename="scan.dcm"',
        },
    )
    tus_auth = rufh.gateway.auth
    head = rufh.client.head(url, headers=tus_auth)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "25" and head.headers["Upload-Length"] == "100"
    pairs = dict(p.split(" ") for p in head.headers["Upload-Metadata"].split(","))
    assert {k: base64.b64decode(v) for k, v in pairs.items()} == {
        "filetype": b"application/dicom",
        "filename": b"scan.dcm",
    }
    patch_headers = {
        **tus_auth,
        "Upload-Offset": "25",
        "Content-Type": "application/offset+octet-stream",
    }
    assert rufh.client.patch(url, headers=patch_headers, content=DATA[25:]).status_code == 204
    assert rufh.is_complete(rufh.head(url))
    assert rufh.download(url) == DATA


def test_tus_metadata_is_kept_as_sent(rufh: Rufh) -> None:
    """tus-js-client sends Upload-Metadata in its IETF modes too."""
    raw = "filename c2Nhbi5kY20=,filetype YXBwbGljYXRpb24vZGljb20="
    url = rufh.created(DATA, done=True, **{"Upload-Metadata": raw})
    assert rufh.client.head(url, headers=rufh.gateway.auth).headers["Upload-Metadata"] == raw


def test_the_interop_version_header_decides_the_protocol(
    gateway_app: tuple[AppGateway, httpx.Client],
) -> None:
    """With Upload-Draft-Interop-Version the request is IETF's (even with Tus-Resumable);
    without it, tus's: a tus creation without Tus-Resumable, or a POST with nothing to
    store, is refused as tus always did (a plain POST of a body is an ordinary upload)."""
    gateway, client = gateway_app
    token = {"Authorization": f"Bearer {gateway.token}"}
    both = {**token, "Tus-Resumable": "1.0.0", fields.INTEROP_HEADER: "8"}
    response = client.post(
        gateway.files_url, headers={**both, "Upload-Complete": "?1"}, content=DATA
    )
    assert response.status_code == 201 and response.headers["Upload-Complete"] == "?1"
    for plain in (
        client.post(gateway.files_url, headers={**token, "Upload-Length": "5"}, content=DATA),
        client.post(gateway.files_url, headers=token),
    ):
        problem(plain, 412, "ERR_UNSUPPORTED_VERSION")
        assert plain.headers["Tus-Version"] == "1.0.0"
    for version in ("2", "9", "x"):
        response = client.post(
            gateway.files_url, headers={**token, fields.INTEROP_HEADER: version}, content=DATA
        )
        problem(response, 400, "ERR_UNSUPPORTED_INTEROP_VERSION")


def test_a_plain_post_of_a_body_is_an_ordinary_upload(
    gateway_app: tuple[AppGateway, httpx.Client],
) -> None:
    """No upload protocol at all: the body is stored whole as a complete upload, with the
    file name from Content-Disposition, and is then like any other upload."""
    gateway, client = gateway_app
    token = {"Authorization": f"Bearer {gateway.token}"}
    headers = {
        **token,
        "Content-Type": "application/dicom",
        "Content-Disposition": 'attachment; filename="CT-0001.dcm"',
    }
    response = client.post(gateway.files_url, headers=headers, content=DATA)
    assert response.status_code == 201, response.text
    url = response.headers["Location"]
    got = client.get(url, headers=token)
    assert got.status_code == 200 and got.content == DATA
    tus_head = client.head(url, headers={**token, "Tus-Resumable": "1.0.0"})
    assert tus_head.headers["Upload-Offset"] == tus_head.headers["Upload-Length"]
    assert tus_head.headers["Upload-Length"] == str(len(DATA))
    names = dict(
        pair.split(" ") for pair in tus_head.headers["Upload-Metadata"].split(",") if " " in pair
    )
    assert base64.b64decode(names["filename"]) == b"CT-0001.dcm"
    assert base64.b64decode(names["filetype"]) == b"application/dicom"
    unauthenticated = client.post(gateway.files_url, content=DATA)
    assert unauthenticated.status_code == 401


def test_tus_options_are_unchanged(gateway_app: tuple[AppGateway, httpx.Client]) -> None:
    gateway, client = gateway_app
    response = client.options(gateway.files_url)
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "Upload-Limit" not in response.headers


@pytest.mark.parametrize("number", [3, 8])
def test_a_final_tus_upload_cannot_be_appended_to(
    gateway_app: tuple[AppGateway, httpx.Client], number: int
) -> None:
    gateway, client = gateway_app
    rufh = Rufh(client, gateway, VERSIONS[number])
    partial = client.post(
        gateway.files_url,
        headers={
            **gateway.auth,
            "Upload-Length": "3",
            "Upload-Concat": "partial",
            "Content-Type": "application/offset+octet-stream",
        },
        content=b"abc",
    ).headers["Location"]
    final = client.post(
        gateway.files_url, headers={**gateway.auth, "Upload-Concat": f"final;{partial}"}
    ).headers["Location"]
    assert rufh.is_complete(rufh.head(final))
    problem(rufh.append(final, 3, b"d", done=True), 400, "ERR_UPLOAD_COMPLETED")
    assert rufh.download(final) == b"abc"
