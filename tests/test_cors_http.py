"""CORS over HTTP, against `gateway serve`: what a browser on another origin sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.rawhttp import raw_request
from tests.server import GatewayProcess
from tests.test_audit_http import entries
from tests.test_observability import wait_for_access
from tests.tushttp import OCTET, assert_problem, b64, checksum_header, start_server

PACS = "https://pacs.example.org"
VIEWER = "http://localhost:5173"
SERVER_ENV = {"GATEWAY_CORS_ORIGINS": f"{PACS},{VIEWER}", "GATEWAY_MAX_SIZE": "1000"}
TUS_HEADERS = "authorization,content-type,tus-resumable,upload-checksum,upload-offset"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the defaults: CORS off."""
    proc = start_server(tmp_path_factory, "cors_off")
    try:
        yield proc
    finally:
        proc.stop()


def preflight(server: GatewayProcess, path: str, origin: str, method: str) -> httpx.Response:
    return httpx.options(
        server.url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": TUS_HEADERS,
        },
    )


def listed(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",")}


def assert_cors(response: httpx.Response, origin: str, *exposed: str) -> None:
    h = response.headers
    assert h.get("access-control-allow-origin") == origin, (response.status_code, h)
    assert {e.lower() for e in exposed} <= listed(h["access-control-expose-headers"])
    assert "origin" in listed(h["vary"])
    assert "access-control-allow-credentials" not in h


def create(server: GatewayProcess, origin: str, length: int = 10) -> httpx.Response:
    headers = {**server.auth, "Origin": origin, "Upload-Length": str(length)}
    return httpx.post(server.files_url, headers=headers)


def test_preflight_for_patch_with_the_tus_headers(server: GatewayProcess) -> None:
    upload = create(server, PACS).headers["Location"]
    path = httpx.URL(upload).path
    for origin in (PACS, VIEWER):
        response = preflight(server, path, origin, "PATCH")
        assert response.status_code == 204, response.text
        h = response.headers
        assert h["access-control-allow-origin"] == origin
        assert "patch" in listed(h["access-control-allow-methods"])
        assert listed(TUS_HEADERS) <= listed(h["access-control-allow-headers"])
        assert h["access-control-max-age"] == "86400"
        assert h["vary"] == "Origin"
    for method in ("POST", "HEAD", "DELETE", "GET", "OPTIONS"):
        response = preflight(server, "/files/", PACS, method)
        assert response.status_code == 204
        assert method.lower() in listed(response.headers["access-control-allow-methods"])


def test_an_upload_from_an_allowed_origin_can_read_its_headers(server: GatewayProcess) -> None:
    auth = {**server.auth, "Origin": PACS}
    created = httpx.post(
        server.files_url,
        headers={**auth, "Upload-Length": "10", "Content-Type": OCTET},
        content=b"hello",
    )
    assert created.status_code == 201, created.text
    assert_cors(created, PACS, "Location", "Upload-Offset", "Upload-Expires", "Tus-Resumable")
    url = created.headers["Location"]
    patched = httpx.patch(
        url,
        headers={**auth, "Upload-Offset": "5", "Content-Type": OCTET},
        content=b"world",
    )
    assert patched.status_code == 204
    assert_cors(patched, PACS, "Upload-Offset")
    head = httpx.head(url, headers=auth)
    assert head.headers["Upload-Offset"] == "10"
    assert_cors(head, PACS, "Upload-Offset", "Upload-Length", "Upload-Metadata")
    options = httpx.options(server.files_url, headers={"Origin": PACS})
    assert options.status_code == 204 and options.headers["tus-version"] == "1.0.0"
    assert_cors(options, PACS, "Tus-Version", "Tus-Extension", "Tus-Max-Size")
    got = httpx.get(url, headers=auth)
    assert got.content == b"helloworld"
    assert_cors(got, PACS)
    deleted = httpx.delete(url, headers=auth)
    assert deleted.status_code == 204
    assert_cors(deleted, PACS, "Upload-Deletion-Receipt")


def test_errors_carry_cors_headers(server: GatewayProcess) -> None:
    origin = {"Origin": PACS}
    url = create(server, PACS).headers["Location"]
    auth = {**server.auth, **origin}
    cases = [
        (httpx.post(server.files_url, headers={**origin, "Tus-Resumable": "1.0.0"}), 401),
        (httpx.post(server.files_url, headers={**origin, "Upload-Length": "1"}), 412),
        (httpx.head(server.files_url + "AbCdEfGhIjKlMnOpQrStUv", headers=auth), 404),
        (
            httpx.patch(
                url, headers={**auth, "Upload-Offset": "3", "Content-Type": OCTET}, content=b"x"
            ),
            409,
        ),
        (httpx.post(server.files_url, headers={**auth, "Upload-Length": "1001"}), 413),
        (
            httpx.patch(
                url,
                headers={
                    **auth,
                    "Upload-Offset": "0",
                    "Content-Type": OCTET,
                    "Upload-Checksum": checksum_header("sha1", b"other"),
                },
                content=b"abc",
            ),
            460,
        ),
        (httpx.put(url, headers=auth), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.text)
        assert_cors(response, PACS, "Retry-After", "Tus-Resumable")
    # Refused by the HTTP rules before any route: a Host line that is not host[:port].
    raw = raw_request(
        server.port,
        b"HEAD /files/ HTTP/1.1\r\nHost: a b\r\nOrigin: " + PACS.encode() + b"\r\n\r\n",
    )
    assert raw.status == 400
    assert raw.headers.get("access-control-allow-origin") == PACS


def test_another_origin_gets_nothing(server: GatewayProcess) -> None:
    for origin in ("https://evil.example", "null", PACS + ":443", "HTTPS://pacs.example.org"):
        response = preflight(server, "/files/", origin, "POST")
        assert_problem(response, 403, "ERR_ORIGIN_NOT_ALLOWED")
        assert not [k for k in response.headers if k.startswith("access-control-")]
        # Served as usual (no browser would let the page read it): no CORS headers.
        created = create(server, origin)
        assert created.status_code == 201
        assert not [k for k in created.headers if k.startswith("access-control-")]
        assert created.headers["vary"] == "Origin"


def test_preflights_are_logged_not_audited(server: GatewayProcess) -> None:
    before = len(entries(server.data_dir))
    ids = {"pf-allowed": PACS, "pf-refused": "https://evil.example"}
    for request_id, origin in ids.items():
        response = httpx.options(
            server.files_url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "X-Request-ID": request_id,
            },
        )
        assert response.headers["x-request-id"] == request_id
    lines = wait_for_access(server, set(ids))
    assert [(line["status"], line["error_code"]) for line in lines["pf-allowed"]] == [(204, None)]
    refused = [(line["status"], line["error_code"]) for line in lines["pf-refused"]]
    assert refused == [(403, "ERR_ORIGIN_NOT_ALLOWED")]
    # Anyone may send a preflight: a refused one is no access attempt for the audit log.
    assert len(entries(server.data_dir)) == before


def test_off_by_default(plain: GatewayProcess) -> None:
    response = preflight(plain, "/files/", PACS, "POST")
    # The tus OPTIONS answers as before, with nothing a browser would accept.
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    created = httpx.post(
        plain.files_url,
        headers={
            **plain.auth,
            "Origin": PACS,
            "Upload-Length": "1",
            "Upload-Metadata": "name " + b64(b"x"),
        },
    )
    assert created.status_code == 201
    for r in (response, created, httpx.get(plain.url + "/healthz", headers={"Origin": PACS})):
        assert not [k for k in r.headers if k.startswith("access-control-")]
        assert "vary" not in r.headers


def test_a_malformed_origin_refuses_to_start(tmp_path: Path) -> None:
    server = GatewayProcess(tmp_path / "data", env={"GATEWAY_CORS_ORIGINS": "https://Pacs.org/"})
    with pytest.raises(RuntimeError, match=r"GATEWAY_CORS_ORIGINS: 'https://Pacs\.org/' must be"):
        server.start(timeout=10)
