"""No metadata at rest: what a client sends in Upload-Metadata is readable nowhere.

Uploads are created with patient-like metadata in every way tus allows (declared
and deferred length, creation-with-upload, an empty upload, partials and a final
concatenation). HEAD must return each header byte for byte, and no marker may show
in any file under the data dir (the catalog with its WAL and shared memory, the
objects, the keyring, the token file), in the server's log, nor, on S3, in any
object of the bucket: neither as sent (base64), nor decoded, nor hex-encoded, nor
inside any base64 run found in a file once decoded.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import GatewayProcess
from tests.tushttp import OCTET, create, patch, patch_headers, upload_id

FILENAME = "DOE^JOHN_MRN12345.dcm"
PATIENT = "Doe, John Q. born 1961-04-12"
MRN = "MRN12345"
KEY = "x-mrn-MRN12345"  # keys are client data too
SECRETS = (FILENAME, PATIENT, MRN, KEY, "DOE^JOHN")
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata_for(flavour: str) -> str:
    """An Upload-Metadata header with the markers, and one part unique to `flavour`."""
    pairs = {
        "filename": b64(FILENAME),
        "patient": b64(PATIENT),
        KEY: b64(flavour),
        "flavour": b64(flavour + "-" + MRN),
    }
    return ",".join(f"{k} {v}" for k, v in pairs.items()) + ",empty"


def _needles() -> list[bytes]:
    needles: list[bytes] = []
    for secret in SECRETS:
        raw = secret.encode()
        needles += [raw, raw.lower(), raw.hex().encode(), raw.hex().upper().encode()]
        # The base64 of the secret wherever it sits in a longer value: the characters
        # that do not depend on the bytes around it, for each of the three alignments.
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw)
            stable = encoded[4 if shift else 0 : len(encoded) - 4]
            if len(stable) >= 8:
                needles += [stable, stable.replace(b"+", b"-").replace(b"/", b"_")]
    return needles


NEEDLES = _needles()


def leaks(blob: bytes) -> Iterator[str]:
    for needle in NEEDLES:
        at = blob.find(needle)
        if at >= 0:
            yield f"{needle[:24]!r} at {at}"
    # Any base64 run, decoded at each alignment, must not hold a marker either.
    for match in _B64_RUN.finditer(blob):
        run = match.group().rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):
            body = run[start:]
            body = body[: len(body) - len(body) % 4]
            try:
                decoded = base64.b64decode(body, validate=True)
            except binascii.Error:
                continue
            for secret in SECRETS:
                if secret.encode() in decoded:
                    yield f"base64 of {secret!r} at {match.start()}"


def _s3_objects(server: GatewayProcess) -> dict[str, bytes]:
    if server.s3 is None:
        return {}
    from minio import Minio  # only with GATEWAY_TEST_STORE=s3

    target = server.s3
    client = Minio(
        target.endpoint.removeprefix("http://"),
        access_key=target.access_key,
        secret_key=target.secret_key,
        secure=False,
        region="us-east-1",
    )
    objects = {}
    for item in client.list_objects(target.bucket, recursive=True):
        name = str(item.object_name)
        response = client.get_object(target.bucket, name)
        try:
            objects[f"s3://{target.bucket}/{name}"] = response.read()
        finally:
            response.close()
            response.release_conn()
    return objects


def assert_no_metadata_at_rest(server: GatewayProcess, *, expect: list[str]) -> None:
    root = server.data_dir.parent  # the data dir and the server's log beside it
    blobs = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    blobs |= _s3_objects(server)
    if server.s3 is not None:
        expect = [*expect, "s3://"]
    for part in expect:
        assert any(part in name for name in blobs), f"expected a file matching {part!r}"
    found = [f"{name}: {leak}" for name, blob in blobs.items() for leak in leaks(blob)]
    assert not found, "client metadata found at rest:\n" + "\n".join(found)


def _head(server: GatewayProcess, url: str) -> httpx.Headers:
    response = httpx.head(url, headers=server.auth, timeout=30)
    assert response.status_code == 200, response.headers
    return response.headers


def _post(server: GatewayProcess, headers: dict[str, str], body: bytes | None = None) -> str:
    h = {**server.auth, **headers}
    if body is not None:
        h["Content-Type"] = OCTET
    response = httpx.post(server.files_url, headers=h, content=body, timeout=60)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


@pytest.fixture
def server(gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    # Debug logging: the most the log ever says.
    return gateway_factory(GATEWAY_SEGMENT_SIZE="65536", GATEWAY_LOG_LEVEL="debug")


def test_metadata_is_sealed_in_every_creation_flavour(server: GatewayProcess) -> None:
    data = os.urandom(150_000)
    sent: dict[str, str] = {}  # url -> Upload-Metadata as sent

    def meta(flavour: str) -> dict[str, str]:
        return {"Upload-Metadata": metadata_for(flavour)}

    # Declared length, in PATCHes; one left unfinished (tail pieces, open multipart).
    url = create(server, len(data), **meta("plain"))
    sent[url] = metadata_for("plain")
    assert patch(server, url, data[:70_001], 0).status_code == 204
    assert patch(server, url, data[70_001:], 70_001).status_code == 204
    url = create(server, len(data), **meta("unfinished"))
    sent[url] = metadata_for("unfinished")
    assert patch(server, url, data[:1000], 0).status_code == 204

    # Deferred length, set by the last PATCH.
    url = create(server, None, **meta("deferred"))
    sent[url] = metadata_for("deferred")
    assert patch(server, url, data[:80_000], 0).status_code == 204
    last = httpx.patch(
        url,
        content=data[80_000:],
        headers=patch_headers(server, 80_000, **{"Upload-Length": str(len(data))}),
        timeout=60,
    )
    assert last.status_code == 204, last.text

    # Creation-with-upload, whole and in part; and an empty upload, done at creation.
    for flavour, body in (("with-upload", data), ("with-upload-part", data[:5000])):
        url = _post(server, {"Upload-Length": str(len(data)), **meta(flavour)}, body)
        sent[url] = metadata_for(flavour)
    url = _post(server, {"Upload-Defer-Length": "1", **meta("with-upload-deferred")}, data)
    sent[url] = metadata_for("with-upload-deferred")
    url = _post(server, {"Upload-Length": "0", **meta("empty")})
    sent[url] = metadata_for("empty")

    # Partials (one deferred, one created with its bytes) and a final of them.
    a = _post(server, {"Upload-Concat": "partial", "Upload-Length": "3000", **meta("partial-a")})
    sent[a] = metadata_for("partial-a")
    assert patch(server, a, data[:3000], 0).status_code == 204
    b = _post(
        server,
        {"Upload-Concat": "partial", "Upload-Length": "4000", **meta("partial-b")},
        data[3000:7000],
    )
    sent[b] = metadata_for("partial-b")
    final = _post(server, {"Upload-Concat": f"final;{a} {b}", **meta("final")})
    sent[final] = metadata_for("final")

    for url, metadata in sent.items():
        assert _head(server, url)["Upload-Metadata"] == metadata, url
    final_body = httpx.get(final, headers=server.auth, timeout=60)
    assert final_body.status_code == 200 and final_body.content == data[:7000]

    uid = upload_id(final)
    assert_no_metadata_at_rest(
        server, expect=["catalog.sqlite3-wal", f"{uid}/manifest", ".log", "keyring"]
    )

    # A restart (the WAL is checkpointed into the catalog file): still sealed, still
    # answered exactly.
    server.stop()
    assert_no_metadata_at_rest(server, expect=["catalog.sqlite3"])
    server.start()
    for url, metadata in sent.items():
        assert _head(server, url)["Upload-Metadata"] == metadata, url

    # Deleting uploads leaves nothing readable behind either.
    for url in (final, a):
        assert httpx.delete(url, headers=server.auth, timeout=30).status_code == 204
    server.stop()
    assert_no_metadata_at_rest(server, expect=["catalog.sqlite3"])


def test_a_catalog_with_plain_metadata_is_sealed_when_the_gateway_starts(
    server: GatewayProcess,
) -> None:
    """A catalog written before metadata was sealed: plain text in its rows, finals
    without a key of their own. The next start seals it all in place."""
    a = _post(server, {"Upload-Concat": "partial", "Upload-Length": "3"}, b"abc")
    b = _post(server, {"Upload-Length": "3", "Upload-Concat": "partial"}, b"def")
    final = _post(server, {"Upload-Concat": f"final;{a} {b}"})
    unfinished = create(server, 100)
    sent = {url: metadata_for(upload_id(url)) for url in (a, b, final, unfinished)}
    server.stop()
    conn = sqlite3.connect(server.data_dir / "catalog.sqlite3")
    with conn:
        for url, metadata in sent.items():
            conn.execute("UPDATE uploads SET metadata = ? WHERE id = ?", (metadata, upload_id(url)))
        conn.execute("DELETE FROM wrapped_keys WHERE upload_id = ?", (upload_id(final),))
        conn.execute(
            "UPDATE uploads SET header = x'', dek_id = x'' WHERE id = ?", (upload_id(final),)
        )
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()
    with pytest.raises(AssertionError, match="client metadata found at rest"):
        assert_no_metadata_at_rest(server, expect=["catalog.sqlite3"])

    server.start()
    for url, metadata in sent.items():
        assert _head(server, url)["Upload-Metadata"] == metadata, url
    assert httpx.get(final, headers=server.auth, timeout=30).content == b"abcdef"
    assert_no_metadata_at_rest(server, expect=["catalog.sqlite3"])
    assert httpx.delete(final, headers=server.auth, timeout=30).status_code == 204
    server.stop()
    assert_no_metadata_at_rest(server, expect=["catalog.sqlite3"])


def test_the_scan_finds_planted_metadata(tmp_path: Path) -> None:
    """The detector itself: each form a marker could take at rest is found."""
    header = metadata_for("planted").encode()
    planted = [
        header,
        FILENAME.encode(),
        b"xx" + base64.b64encode(b"q" + PATIENT.encode() + b"zz") + b"yy",
        base64.urlsafe_b64encode(b"ab" + FILENAME.encode()),
        MRN.encode().hex().encode(),
        base64.b64encode(b"{'filename': '" + FILENAME.encode() + b"'}"),
    ]
    for blob in planted:
        assert any(leaks(os.urandom(1000) + blob + os.urandom(1000))), blob
    assert not any(leaks(os.urandom(1 << 20)))
    assert not any(leaks(base64.b64encode(os.urandom(1 << 16))))
