"""The signed manifest of a finished upload, end to end over real HTTP.

What the manifest says is checked against what was sent and what is stored, and its
JWS is verified with joserfc, an independent JOSE implementation, using the JWKS the
server publishes. The plaintext SHA-256 must be right however the bytes arrived:
one PATCH, many odd ones, across a restart (the running hash is lost and rebuilt from
the records), across a kill -9, with a deferred length, and around a checksum failure.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.layout import data_key, manifest_keys
from tests.conftest import sha256
from tests.rawhttp import StreamingPatch
from tests.server import GatewayProcess, store_for
from tests.tushttp import (
    OCTET,
    UNKNOWN_ID,
    assert_problem,
    create,
    error_code,
    head_offset,
    manifest_json,
    patch,
    patch_headers,
    segment_size,
    send,
    upload,
    upload_id,
)

SEG_ENV = {"GATEWAY_SEGMENT_SIZE": "65536"}
SERVER_ENV = SEG_ENV  # for the module's `server` (conftest.py)
QUICK = {"GATEWAY_LEASE_TTL": "2"}  # a killed holder's lease is taken over quickly
RECORD_OVERHEAD = 28
JWS_TYP = "imgw-manifest+jws"

# Distinctive values that must never reach a manifest.
FILENAME = "Zyzzyva-Quokka-Scan-4711.dcm"
PATIENT = "DOE^JOHNATHAN^QUIXOTE"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash, written out independently of the gateway."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def keys_named(value: object) -> set[str]:
    """Every object member name anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(keys_named(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys_named(v) for v in value))
    return set()


def assert_plaintext(server: GatewayProcess, url: str, data: bytes) -> dict[str, Any]:
    """The manifest's plaintext size and SHA-256 are those of `data`; so is the download."""
    doc = manifest_json(server, upload_id(url))
    assert (doc["plaintext"]["size"], doc["plaintext"]["sha256"]) == (len(data), sha256(data)), (
        "the manifest's plaintext digest is not the SHA-256 of the uploaded bytes"
    )
    assert doc["upload"]["length"] == len(data)
    response = httpx.get(url, headers=server.auth, timeout=60)
    assert response.status_code == 200
    assert sha256(response.content) == sha256(data), "the download differs from the upload"
    return doc


# -- what the manifest says -----------------------------------------------------------------


def test_manifest_describes_the_upload_and_the_stored_object(
    server: GatewayProcess, client: httpx.Client
) -> None:
    seg = segment_size(server)
    data = os.urandom(2 * seg + 4321)
    metadata = f"filename {b64(FILENAME)},patient {b64(PATIENT)},empty"
    url = upload(server, data, [1000, len(data) - 1000], **{"Upload-Metadata": metadata})
    uid = upload_id(url)
    assert client.head(url, headers=server.auth).headers["Upload-Metadata"] == metadata

    signed = client.get(f"{url}/manifest", headers=server.auth)
    assert signed.status_code == 200, signed.text
    assert signed.headers["Content-Type"] == "application/jose"
    assert "no-store" in signed.headers["Cache-Control"]
    as_json = client.get(f"{url}/manifest", headers={**server.auth, "Accept": "application/json"})
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["Content-Type"].startswith("application/json")
    assert "no-store" in as_json.headers["Cache-Control"]

    # The JSON is the JWS payload byte for byte. What is stored readable is the stored
    # view: the same document without the plaintext SHA-256 and the client checksum.
    token = signed.content.decode("ascii")
    header_b64, payload_b64, _ = token.split(".")
    assert b64url_decode(payload_b64) == as_json.content
    store = store_for(server.data_dir)
    json_key, jws_key = manifest_keys(uid)
    stored_token = store.get(jws_key).decode("ascii")
    assert b64url_decode(stored_token.split(".")[1]) == store.get(json_key)
    stored = json.loads(store.get(json_key))
    expected = json.loads(as_json.content)
    expected["view"] = "stored"
    del expected["plaintext"]["sha256"], expected["upload"]["client_checksum"]
    assert stored == expected
    for part in (header_b64, stored_token.split(".")[0]):
        assert json.loads(b64url_decode(part)) == {
            "alg": "Ed25519",
            "kid": json.loads(as_json.content)["signer"]["kid"],
            "typ": JWS_TYP,
        }

    doc = as_json.json()
    assert doc["manifest_version"] == 2
    assert doc["view"] == "reader"
    assert doc["upload"]["id"] == uid
    assert doc["upload"]["length"] == len(data)
    assert doc["upload"]["uploader"] == {"principal": "admin", "tenant": "default"}
    assert doc["upload"]["client_checksum"] is None
    assert doc["upload"]["created"] <= doc["upload"]["completed"]
    assert doc["plaintext"]["size"] == len(data)
    assert doc["plaintext"]["sha256"] == sha256(data)
    assert len(doc["plaintext"]["sha256_hmac"]) == 64

    # The records: count, each hash from the stored bytes, and the Merkle root.
    blob = store.get(data_key(uid))
    header_len = 104 + len(uid)
    stride = seg + RECORD_OVERHEAD
    records = [blob[i : i + stride] for i in range(header_len, len(blob), stride)]
    assert len(records) == 3
    assert doc["records"]["count"] == 3
    assert doc["encryption"]["segment_count"] == 3
    assert doc["encryption"]["segment_size"] == seg
    assert doc["storage"]["part_count"] == 3
    assert doc["storage"]["part_size"] == stride
    assert doc["storage"]["size"] == len(blob)
    assert doc["storage"]["key"] == data_key(uid)
    assert doc["encryption"]["header_sha256"] == sha256(blob[:header_len])
    hashes = [hashlib.sha256(r).digest() for r in records]
    assert doc["records"]["sha256"] == [h.hex() for h in hashes]
    assert doc["records"]["merkle_root"] == mth(hashes).hex()
    assert doc["records"]["merkle"] == "rfc6962-sha256"

    # The signer's kid is published, with a public key only.
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=30)  # no token needed
    assert jwks.status_code == 200
    published = {k["kid"]: k for k in jwks.json()["keys"]}
    assert doc["signer"] == {"kid": doc["signer"]["kid"], "alg": "Ed25519"}
    assert doc["signer"]["kid"] in published, "the signing key is not in the JWKS"
    assert "d" not in published[doc["signer"]["kid"]], "the JWKS publishes a private key"

    # No metadata, file name or patient data anywhere: HTTP bodies and stored files.
    assert not keys_named(doc) & {"metadata", "filename"}
    for where, body in {
        "GET manifest (JWS)": signed.content,
        "GET manifest (JSON)": as_json.content,
        "the JWS payload": b64url_decode(payload_b64),
        "stored manifest.json": store.get(json_key),
        "stored manifest.jws": store.get(jws_key),
    }.items():
        for secret in (FILENAME, b64(FILENAME), PATIENT, b64(PATIENT), metadata):
            assert secret.encode() not in body, f"{where} carries upload metadata {secret!r}"
        for secret in (FILENAME, PATIENT):
            assert secret.lower().encode() not in body.lower(), f"{where} carries {secret!r}"


def test_jws_verifies_with_joserfc_and_the_published_jwks(
    server: GatewayProcess, client: httpx.Client
) -> None:
    data = os.urandom(100_000)
    url = upload(server, data)
    token = client.get(f"{url}/manifest", headers=server.auth).text
    stored_json = client.get(
        f"{url}/manifest", headers={**server.auth, "Accept": "application/json"}
    ).content
    jwks = client.get(f"{server.url}/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert jwks.headers["Content-Type"].startswith("application/json")
    keys = KeySet.import_key_set(jwks.json())

    # joserfc does not enable Ed25519 by default: name it, as a careful verifier would.
    signed = jose_jws.deserialize_compact(token, keys, algorithms=["Ed25519"])
    kid = json.loads(stored_json)["signer"]["kid"]
    assert signed.protected == {"alg": "Ed25519", "kid": kid, "typ": JWS_TYP}
    assert signed.payload == stored_json
    manifest = json.loads(signed.payload)
    assert manifest["upload"]["id"] == upload_id(url)
    assert manifest["plaintext"]["sha256"] == sha256(data)

    # joserfc really checks: one changed payload character and it refuses.
    h, p, s = token.split(".")
    i = len(p) // 2
    forged = f"{h}.{p[:i]}{'A' if p[i] != 'A' else 'B'}{p[i + 1 :]}.{s}"
    with pytest.raises(JoseError):
        jose_jws.deserialize_compact(forged, keys, algorithms=["Ed25519"])


def test_manifest_of_an_empty_upload(server: GatewayProcess) -> None:
    url = upload(server, b"")
    doc = assert_plaintext(server, url, b"")
    assert doc["records"]["count"] == 1  # one empty final record
    assert doc["storage"]["size"] == 104 + len(upload_id(url)) + RECORD_OVERHEAD


def test_client_checksum_of_the_creation_is_not_in_the_way(server: GatewayProcess) -> None:
    """A checksummed single-request upload (creation-with-upload)."""
    data = os.urandom(70_000)
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    response = httpx.post(
        server.files_url,
        headers={
            **server.auth,
            "Upload-Length": str(len(data)),
            "Content-Type": OCTET,
            "Upload-Checksum": f"sha1 {digest}",
        },
        content=data,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    doc = assert_plaintext(server, response.headers["Location"], data)
    assert doc["upload"]["client_checksum"] == f"sha1 {digest}"


# -- unfinished, unknown, not yours ---------------------------------------------------------


def test_manifest_of_an_unfinished_upload_is_400(
    server: GatewayProcess, client: httpx.Client
) -> None:
    seg = segment_size(server)
    data = os.urandom(2 * seg)
    fresh = create(server, len(data))
    half = create(server, len(data))
    send(server, half, data[: seg + 5], 0)
    deferred = create(server, None)
    send(server, deferred, data, 0)  # every byte, but the length is still open
    for url in (fresh, half, deferred):
        for accept in ("application/jose", "application/json"):
            response = client.get(f"{url}/manifest", headers={**server.auth, "Accept": accept})
            assert_problem(response, 400, "ERR_UPLOAD_NOT_FINISHED")
    # Once finished, it is there.
    send(server, half, data, seg + 5)
    assert_plaintext(server, half, data)


def test_manifest_of_an_unknown_upload_is_404(server: GatewayProcess, client: httpx.Client) -> None:
    response = client.get(f"{server.files_url}{UNKNOWN_ID}/manifest", headers=server.auth)
    assert_problem(response, 404, "ERR_UPLOAD_NOT_FOUND")


# -- the plaintext SHA-256, however the bytes arrived -----------------------------------------


def test_sha256_single_patch(server: GatewayProcess) -> None:
    data = os.urandom(3 * segment_size(server) + 99)
    assert_plaintext(server, upload(server, data), data)


def test_sha256_many_patches_of_odd_sizes(server: GatewayProcess) -> None:
    seg = segment_size(server)
    rng = random.Random(1234)
    choices = [1, 2, 7, 4093, seg - 1, seg, seg + 1, 100_003]
    sizes = [rng.choice(choices) for _ in range(14)]
    data = os.urandom(sum(sizes))
    assert_plaintext(server, upload(server, data, sizes), data)


@pytest.mark.parametrize(
    "plan",
    [
        # (bytes sent before the length is known, then the rest with Upload-Length)
        lambda s: [2 * s, 0],  # ends on a boundary; the last record was sealed non-final
        lambda s: [s, s],  # the PATCH that declares the length fills the last segment
        lambda s: [s + 5, 2 * s - 5],  # ends on a boundary after a tail piece
        lambda s: [0, 3 * s],  # length declared on the first PATCH
        lambda s: [7, 0],  # tiny, the length declared with an empty body
    ],
    ids=[
        "boundary-empty-final",
        "boundary-in-final-patch",
        "tail-then-boundary",
        "all-at-once",
        "tiny",
    ],
)
def test_sha256_deferred_length(server: GatewayProcess, plan: Callable[[int], list[int]]) -> None:
    before, rest = plan(segment_size(server))
    data = os.urandom(before + rest)
    url = create(server, None)
    if before:
        send(server, url, data[:before], 0)
    response = httpx.patch(
        url,
        content=data[before:],
        headers=patch_headers(server, before, **{"Upload-Length": str(len(data))}),
        timeout=60,
    )
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    assert_plaintext(server, url, data)


def _checksum(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


@pytest.mark.parametrize("at", [0, 100_003], ids=["first-patch", "mid-upload"])
def test_sha256_survives_a_checksum_mismatch(server: GatewayProcess, at: int) -> None:
    """A 460 body is sealed (the records are hashed while they arrive) but never
    recorded: the plaintext hash must not keep what it saw of it."""
    seg = segment_size(server)
    data = os.urandom(5 * seg + 77)
    url = create(server, len(data))
    if at:
        response = patch_with(server, url, data[:at], 0, _checksum(data[:at]))
        assert response.status_code == 204, response.text
    # Three segments' worth of wrong bytes, announced with the right bytes' checksum.
    good = data[at : at + 3 * seg]
    bad = bytes(b ^ 0xFF for b in good)
    response = patch_with(server, url, bad, at, _checksum(good))
    assert response.status_code == 460, response.text
    assert error_code(response) == "ERR_CHECKSUM_MISMATCH"
    assert head_offset(server, url) == at, "a body that failed its checksum was recorded"
    offset = at
    for size in (3 * seg, len(data) - at - 3 * seg):
        piece = data[offset : offset + size]
        response = patch_with(server, url, piece, offset, _checksum(piece))
        assert response.status_code == 204, response.text
        offset += size
    assert_plaintext(server, url, data)


def patch_with(
    server: GatewayProcess, url: str, body: bytes, offset: int, checksum: str
) -> httpx.Response:
    return httpx.patch(
        url,
        content=body,
        headers=patch_headers(server, offset, **{"Upload-Checksum": checksum}),
        timeout=60,
    )


def test_sha256_across_a_restart(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """The running hash lives in the process: after a restart it is rebuilt from the
    stored records. Uploads stopped at several kinds of offsets are finished after it."""
    server = gateway_factory(**SEG_ENV)
    seg = segment_size(server)
    firsts = {
        "in-segment-0": 1000,  # only a tail piece: the new process hashes from 0 again
        "on-a-boundary": seg,
        "record-and-tail": seg + 34_464,
        "two-records-and-tail": 2 * seg + 1,
    }
    uploads = {}
    for name, first in firsts.items():
        data = os.urandom(3 * seg + 500)
        url = create(server, len(data))
        send(server, url, data[:first], 0)
        uploads[name] = (url, data, first)
    deferred_data = os.urandom(2 * seg)
    deferred = create(server, None)
    send(server, deferred, deferred_data[: seg + 3], 0)

    server.stop()
    server.start()

    for name, (url, data, first) in uploads.items():
        assert head_offset(server, url) == first, name
        send(server, url, data, first, [7, len(data) - first - 7])
        assert_plaintext(server, url, data)
    response = httpx.patch(
        deferred,
        content=deferred_data[seg + 3 :],
        headers=patch_headers(server, seg + 3, **{"Upload-Length": str(2 * seg)}),
        timeout=60,
    )
    assert response.status_code == 204, response.text
    assert_plaintext(server, deferred, deferred_data)


def test_sha256_after_kill_9_mid_patch(gateway_factory: Callable[..., GatewayProcess]) -> None:
    """kill -9 while a body arrives (the pattern of tests/test_crash.py), restart, resume."""
    server = gateway_factory(**SEG_ENV, **QUICK)
    data = os.urandom(4 * 1024 * 1024 + 321)
    url = create(server, len(data))
    first = 100_003
    send(server, url, data[:first], 0)  # a running hash exists before the kill
    stream = StreamingPatch(server, url, data, first, slow_after=1024 * 1024).begin()
    assert stream.reached.wait(60), "the body never got going"
    time.sleep(0.05)
    assert not stream.done.is_set(), "the PATCH ended before the kill"
    server.kill()
    sent = stream.sent
    stream.join()
    assert stream.response is None, "a killed server cannot have answered"

    server.start()
    offset = head_offset(server, url)
    assert first <= offset <= first + sent
    response = patch(server, url, data[offset:], offset)
    assert response.status_code == 204, response.text
    assert_plaintext(server, url, data)


# -- no plaintext digest readable at rest; the reader's manifest discloses it ---------------


def digest_forms(digest: bytes) -> dict[str, bytes]:
    """The ways a digest could be written down: raw, hex, base64, base64url."""
    return {
        "raw": digest,
        "hex": digest.hex().encode(),
        "HEX": digest.hex().upper().encode(),
        "base64": base64.b64encode(digest),
        "base64url": base64.urlsafe_b64encode(digest).rstrip(b"="),
    }


def stored_blobs(server: GatewayProcess, uid: str) -> dict[str, bytes]:
    """Every file of the data dir (catalog, objects, log) and the upload's stored objects."""
    blobs = {str(p): p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file()}
    if server.log_path is not None and server.log_path.exists():
        blobs["log"] = server.log_path.read_bytes()
    store = store_for(server.data_dir)
    for key in (data_key(uid), *manifest_keys(uid), f"{uid}/manifest.sealed"):
        with contextlib.suppress(Exception):
            blobs[f"store:{key}"] = store.get(key)
    return blobs


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_no_plaintext_digest_at_rest_but_the_reader_gets_it(
    server: GatewayProcess, client: httpx.Client, algorithm: str
) -> None:
    """Whoever can read the bucket (or the data dir) must not be able to test whether a
    known file was uploaded: neither its SHA-256 nor the client's checksum of it may be
    stored readable. The owner still gets both, in the signed manifest it is served."""
    data = os.urandom(70_000)
    client_digest = hashlib.new(algorithm, data).digest()
    checksum = f"{algorithm} {base64.b64encode(client_digest).decode()}"
    url = create(server, len(data))
    response = patch_with(server, url, data, 0, checksum)
    assert response.status_code == 204, response.text
    uid = upload_id(url)

    served = manifest_json(server, uid)
    assert served["plaintext"]["sha256"] == sha256(data)
    assert served["upload"]["client_checksum"] == checksum
    token = client.get(f"{url}/manifest", headers=server.auth).text
    assert json.loads(b64url_decode(token.split(".")[1])) == served

    needles = {f"sha256 {k}": v for k, v in digest_forms(hashlib.sha256(data).digest()).items()}
    needles |= {f"{algorithm} {k}": v for k, v in digest_forms(client_digest).items()}
    blobs = stored_blobs(server, uid)
    assert f"store:{manifest_keys(uid)[1]}" in blobs
    found = [
        f"{where}: {name}"
        for where, blob in blobs.items()
        for name, n in needles.items()
        if n in blob
    ]
    assert not found, "a plaintext digest is readable at rest:\n" + "\n".join(found)


def test_client_checksum_is_that_of_a_patch_carrying_the_whole_upload(
    server: GatewayProcess,
) -> None:
    """MANIFEST.md: `client_checksum` is a whole-upload checksum. tus checksums cover one
    request body, so it is recorded when one body carried the whole upload, and only then."""
    data = os.urandom(100_000)
    url = create(server, len(data))
    assert patch_with(server, url, data, 0, _checksum(data)).status_code == 204
    assert manifest_json(server, upload_id(url))["upload"]["client_checksum"] == _checksum(data)

    url = create(server, len(data))
    for lo, hi in ((0, 40_000), (40_000, len(data))):
        assert patch_with(server, url, data[lo:hi], lo, _checksum(data[lo:hi])).status_code == 204
    doc = manifest_json(server, upload_id(url))
    assert doc["upload"]["client_checksum"] is None
    assert doc["plaintext"]["sha256"] == sha256(data)
