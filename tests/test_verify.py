"""`gateway verify` as a command: a stored upload against its signed manifest.

Runs `python -m gateway.cli verify` as a subprocess on the data dir of a real gateway
(running, or stopped), after damaging exactly one thing at a time: one byte of the
sealed object (header, a record's ciphertext, the last tag), one byte of either
manifest file, the object's length, the keys it is checked with. Each damage must
give exit 1 and a FAIL line naming what failed; an untouched upload exit 0.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.layout import data_key, manifest_keys, reader_manifest_key
from tests.https_jwks import serve_jwks
from tests.server import GatewayProcess, free_port, store_for
from tests.tushttp import (
    UNKNOWN_ID,
    create,
    flip_stored_byte,
    manifest_json,
    patch_headers,
    segment_size,
    send,
    upload,
    upload_id,
)

SEG_ENV = {"GATEWAY_SEGMENT_SIZE": "65536"}
SERVER_ENV = SEG_ENV  # for the module's `server` (conftest.py)
RECORD_OVERHEAD = 28
TAG_LEN = 16
NONCE_LEN = 12


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def checks(self) -> list[str]:
        """The per-check lines ("ok    ...", "FAIL  ...", "skip  ..."), unindented."""
        return [line.strip() for line in self.stdout.splitlines() if line.startswith("  ")]

    @property
    def failed(self) -> list[str]:
        return [c for c in self.checks if c.startswith("FAIL")]

    def __str__(self) -> str:
        return f"exit {self.code}\n{self.stdout}{self.stderr}"


def verify(
    server: GatewayProcess,
    uid: str,
    *args: str,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run `gateway verify` on the server's data dir (with its store settings)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "verify",
            "--data-dir",
            str(data_dir or server.data_dir),
            *args,
            # Ids are base64url and may start with "-": see test_id_starting_with_a_dash.
            "--",
            uid,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **server.env, **(env or {})},
    )
    return Result(out.returncode, out.stdout, out.stderr)


def assert_all_ok(result: Result, *, decrypted: bool = True) -> None:
    assert result.code == 0, str(result)
    assert result.checks, str(result)
    for check in result.checks:
        allowed = ("ok",) if decrypted else ("ok", "skip")
        assert check.startswith(allowed), f"not ok: {check!r}\n{result}"
    names = {c.split()[1].rstrip(":") for c in result.checks if c.startswith("ok")}
    assert {"signature", "manifest.json", "object", "records"} <= names, str(result)
    assert ("plaintext" in names) == decrypted, str(result)
    assert result.stdout.splitlines()[-1].startswith("OK"), str(result)


def assert_fails(result: Result, *names: str) -> None:
    """Exit 1, and for each name a FAIL line that starts with it."""
    assert result.code == 1, str(result)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("FAILED"), str(result)
    for name in names:
        assert any(f.split()[1].startswith(name) for f in result.failed), (
            f"no FAIL line names {name!r}\n{result}"
        )


def finished(server: GatewayProcess, size: int) -> str:
    return upload_id(upload(server, os.urandom(size)))


# -- untouched uploads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [lambda s: 0, lambda s: 1, lambda s: s, lambda s: 3 * s + 1234],
    ids=["empty", "one-byte", "one-segment", "four-records"],
)
def test_untouched_upload_verifies(server: GatewayProcess, size: Callable[[int], int]) -> None:
    uid = finished(server, size(segment_size(server)))
    result = verify(server, uid)
    assert_all_ok(result)
    assert result.stdout.splitlines()[0] == f"verify {uid}"


def test_deferred_upload_with_an_empty_final_record_verifies(server: GatewayProcess) -> None:
    """The length declared after a body that ended on a segment boundary: the object
    ends with an empty (28-byte) final record, which verify must accept."""
    seg = segment_size(server)
    data = os.urandom(2 * seg)
    url = create(server, None)
    send(server, url, data, 0)
    response = httpx.patch(
        url,
        content=b"",
        headers=patch_headers(server, len(data), **{"Upload-Length": str(len(data))}),
        timeout=30,
    )
    assert response.status_code == 204, response.text
    uid = upload_id(url)
    assert manifest_json(server, uid)["records"]["count"] == 3
    assert_all_ok(verify(server, uid))


def test_verify_with_the_server_stopped(gateway_factory: Callable[..., GatewayProcess]) -> None:
    server = gateway_factory(**SEG_ENV)
    uid = finished(server, 2 * segment_size(server) + 1)
    server.stop()
    assert_all_ok(verify(server, uid))
    flip_stored_byte(server.data_dir, data_key(uid), -1)
    assert_fails(verify(server, uid), "records", "decrypt")


# -- a damaged object -----------------------------------------------------------------------


def _header_len(uid: str) -> int:
    return 104 + len(uid)


# Where to flip one byte, as a function of (upload id, segment size, object size), and
# which checks must then fail.
FLIPS: dict[str, tuple[Callable[[str, int, int], int], tuple[str, ...]]] = {
    "header-magic": (lambda u, s, n: 0, ("header",)),
    "header-segment-size": (lambda u, s, n: 12, ("header",)),
    "header-upload-id": (lambda u, s, n: 24 + 3, ("header",)),
    "header-salt": (lambda u, s, n: 24 + len(u) + 5, ("header",)),
    "header-commitment": (lambda u, s, n: _header_len(u) - 1, ("header",)),
    "record-0-nonce": (lambda u, s, n: _header_len(u) + 2, ("records", "decrypt")),
    "record-0-ciphertext": (
        lambda u, s, n: _header_len(u) + NONCE_LEN + 999,
        ("records", "decrypt"),
    ),
    "record-1-ciphertext": (
        lambda u, s, n: _header_len(u) + (s + RECORD_OVERHEAD) + NONCE_LEN + s // 2,
        ("records", "decrypt"),
    ),
    "record-1-tag": (
        lambda u, s, n: _header_len(u) + 2 * (s + RECORD_OVERHEAD) - 1,
        ("records", "decrypt"),
    ),
    "last-record-ciphertext": (lambda u, s, n: n - TAG_LEN - 1, ("records", "decrypt")),
    "last-record-tag": (lambda u, s, n: n - 1, ("records", "decrypt")),
}


# Also checked with --no-decrypt: the record hashes and header digest need no key.
WITHOUT_KEYS_TOO = {"header-salt", "record-1-ciphertext", "last-record-tag"}


@pytest.mark.parametrize("where, names", FLIPS.values(), ids=FLIPS.keys())
def test_one_flipped_byte_in_the_object_fails(
    request: pytest.FixtureRequest,
    server: GatewayProcess,
    where: Callable[[str, int, int], int],
    names: tuple[str, ...],
) -> None:
    seg = segment_size(server)
    uid = finished(server, 2 * seg + 5000)
    key = data_key(uid)
    store = store_for(server.data_dir)
    flip_stored_byte(server.data_dir, key, where(uid, seg, store.size(key)))
    assert_fails(verify(server, uid), *names)
    if request.node.callspec.id in WITHOUT_KEYS_TOO:
        result = verify(server, uid, "--no-decrypt")
        assert_fails(result, names[0])
        assert not any(f.startswith("FAIL  decrypt") for f in result.failed), str(result)


def test_the_failing_record_is_named(server: GatewayProcess) -> None:
    seg = segment_size(server)
    uid = finished(server, 3 * seg + 10)
    flip_stored_byte(server.data_dir, data_key(uid), _header_len(uid) + 2 * (seg + 28) + 100)
    result = verify(server, uid)
    assert_fails(result, "records", "decrypt")
    assert any("record 2" in f for f in result.failed), str(result)
    assert not any("record 0" in f or "record 1" in f for f in result.failed), str(result)


@pytest.mark.parametrize(
    "cut",
    [lambda s: 1, lambda s: TAG_LEN, lambda s: s + RECORD_OVERHEAD],
    ids=["one-byte", "a-tag", "a-whole-record"],
)
def test_truncated_object_fails(server: GatewayProcess, cut: Callable[[int], int]) -> None:
    seg = segment_size(server)
    uid = finished(server, 2 * seg + 5000)
    key = data_key(uid)
    store = store_for(server.data_dir)
    blob = store.get(key)
    store.put(key, blob[: -cut(seg)])
    assert_fails(verify(server, uid), "object")


def test_object_of_another_upload_fails(server: GatewayProcess) -> None:
    """Same length, valid ciphertext, but not the bytes this manifest signed for."""
    size = segment_size(server) + 17
    mine, theirs = finished(server, size), finished(server, size)
    store = store_for(server.data_dir)
    store.put(data_key(mine), store.get(data_key(theirs)))
    assert_fails(verify(server, mine), "header")


def test_missing_object_fails(server: GatewayProcess) -> None:
    uid = finished(server, 10)
    store_for(server.data_dir).delete(data_key(uid))
    assert_fails(verify(server, uid), "object")


# -- damaged manifests ----------------------------------------------------------------------


def test_flipped_byte_in_manifest_json_fails(server: GatewayProcess) -> None:
    uid = finished(server, 1000)
    json_key, _ = manifest_keys(uid)
    size = store_for(server.data_dir).size(json_key)
    flip_stored_byte(server.data_dir, json_key, size // 2)
    result = verify(server, uid)
    assert_fails(result, "manifest.json")
    assert any(c.startswith("ok    signature") for c in result.checks), str(result)


def test_missing_manifest_json_fails(server: GatewayProcess) -> None:
    uid = finished(server, 1000)
    store_for(server.data_dir).delete(manifest_keys(uid)[0])
    assert_fails(verify(server, uid), "manifest.json")


def test_missing_reader_manifest_fails(server: GatewayProcess) -> None:
    uid = finished(server, 1000)
    store_for(server.data_dir).delete(reader_manifest_key(uid))
    assert_fails(verify(server, uid), "reader")
    assert_all_ok(verify(server, uid, "--no-decrypt"), decrypted=False)  # sealed: unread


def test_a_flipped_byte_in_the_reader_manifest_fails_its_authentication(
    server: GatewayProcess,
) -> None:
    uid = finished(server, 1000)
    key = reader_manifest_key(uid)
    flip_stored_byte(server.data_dir, key, store_for(server.data_dir).size(key) // 2)
    result = verify(server, uid)
    assert_fails(result, "reader")
    assert any("fails authentication" in line for line in result.failed), str(result)


def test_the_reader_manifest_of_another_upload_fails(server: GatewayProcess) -> None:
    uid, other = finished(server, 1000), finished(server, 1000)
    store = store_for(server.data_dir)
    store.put(reader_manifest_key(uid), store.get(reader_manifest_key(other)))
    assert_fails(verify(server, uid), "reader")


def _replace_char(text: str, index: int) -> str:
    """Another base64url character at `index`, so the JWS stays well-formed."""
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize("part", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize("how", ["char", "byte"])
def test_damaged_jws_fails_the_signature(server: GatewayProcess, part: int, how: str) -> None:
    uid = finished(server, 1000)
    _, jws_key = manifest_keys(uid)
    store = store_for(server.data_dir)
    token = store.get(jws_key).decode("ascii")
    parts = token.split(".")
    if how == "char":
        # A different but well-formed base64url character in the middle of the part.
        parts[part] = _replace_char(parts[part], len(parts[part]) // 2)
        store.put(jws_key, ".".join(parts).encode("ascii"))
    else:
        # One bit of one byte of the file, in the middle of the part.
        offset = sum(len(p) + 1 for p in parts[:part]) + len(parts[part]) // 2
        flip_stored_byte(server.data_dir, jws_key, offset)
    result = verify(server, uid)
    assert_fails(result, "signature")
    assert not any(c.startswith("ok") for c in result.checks), str(result)
    if how == "char" and part != 0:
        assert "bad signature" in result.stdout, str(result)


def test_manifest_of_another_upload_fails(server: GatewayProcess) -> None:
    """A valid, signed manifest copied over from another upload names that upload."""
    mine, theirs = finished(server, 500), finished(server, 500)
    store = store_for(server.data_dir)
    for mine_key, theirs_key in zip(manifest_keys(mine), manifest_keys(theirs), strict=True):
        store.put(mine_key, store.get(theirs_key))
    assert_fails(verify(server, mine), "manifest")


# -- options: --no-decrypt and --jwks ---------------------------------------------------------


def test_no_decrypt_checks_everything_but_the_plaintext(server: GatewayProcess) -> None:
    uid = finished(server, 2 * segment_size(server) + 3)
    result = verify(server, uid, "--no-decrypt")
    assert_all_ok(result, decrypted=False)
    assert not any("plaintext" in c and c.startswith("ok") for c in result.checks)


def test_jwks_file_from_the_server(server: GatewayProcess, tmp_path: Path) -> None:
    uid = finished(server, 70_000)
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=30)
    assert jwks.status_code == 200
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks.content)
    assert_all_ok(verify(server, uid, "--jwks", str(path)))
    assert_all_ok(verify(server, uid, "--jwks", str(path), "--no-decrypt"), decrypted=False)


def test_an_http_jwks_url_is_refused(server: GatewayProcess) -> None:
    """Over plain http anyone on the path could hand over their own keys."""
    uid = finished(server, 70_000)
    for url in (f"{server.url}/.well-known/jwks.json", "HTTP://127.0.0.1:1/jwks.json"):
        result = verify(server, uid, "--jwks", url)
        assert result.code == 2, str(result)
        assert "refusing" in result.stderr and "https" in result.stderr, str(result)
        assert "Traceback" not in result.stderr and not result.checks, str(result)


def test_an_https_jwks_url_with_a_trusted_certificate(
    server: GatewayProcess, tmp_path: Path
) -> None:
    uid = finished(server, 70_000)
    document = httpx.get(f"{server.url}/.well-known/jwks.json", timeout=30).content
    with serve_jwks(document, tmp_path / "tls") as jwks:
        result = verify(server, uid, "--jwks", jwks.url, env={"SSL_CERT_FILE": str(jwks.ca_file)})
        assert_all_ok(result)
        kid = manifest_json(server, uid)["signer"]["kid"]
        assert f"ok    signature: Ed25519 by {kid}" in result.stdout, str(result)
        # Not trusted (the system's CAs only): a usage error naming the JWKS.
        untrusted = verify(server, uid, "--jwks", jwks.url, env={"SSL_CERT_FILE": "/dev/null"})
        assert untrusted.code == 2 and "jwks" in untrusted.stderr.lower(), str(untrusted)


def test_the_report_names_the_key_and_whether_it_is_current(server: GatewayProcess) -> None:
    uid = finished(server, 1000)
    kid = manifest_json(server, uid)["signer"]["kid"]
    result = verify(server, uid)
    assert f"signature: Ed25519 by {kid} (the current signing key)" in result.stdout, str(result)


def _jwk(kid: str, key: Ed25519PrivateKey) -> dict[str, object]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "Ed25519", "use": "sig"}


@pytest.mark.parametrize("same_kid", [True, False], ids=["same-kid", "other-kid"])
def test_jwks_with_another_key_fails(
    server: GatewayProcess, tmp_path: Path, same_kid: bool
) -> None:
    uid = finished(server, 1000)
    kid = manifest_json(server, uid)["signer"]["kid"]
    path = tmp_path / "other-jwks.json"
    other = _jwk(kid if same_kid else "not-the-gateway", Ed25519PrivateKey.generate())
    path.write_text(json.dumps({"keys": [other]}))
    result = verify(server, uid, "--jwks", str(path))
    assert_fails(result, "signature")
    expected = "bad signature" if same_kid else "unknown kid"
    assert expected in result.stdout, str(result)
    assert kid in result.stdout, f"the failure does not name the kid {kid!r}\n{result}"


# -- no such upload, bad usage ----------------------------------------------------------------


def test_unknown_id_fails(server: GatewayProcess) -> None:
    result = verify(server, UNKNOWN_ID)
    assert_fails(result, "manifest")
    assert "does not exist" in result.stdout, str(result)


def test_unfinished_upload_has_no_manifest(server: GatewayProcess) -> None:
    url = create(server, 10_000)
    send(server, url, os.urandom(10_000), 0, [5000])
    assert_fails(verify(server, upload_id(url)), "manifest")


def test_usage_problems_exit_2(server: GatewayProcess, tmp_path: Path) -> None:
    uid = finished(server, 10)
    empty = tmp_path / "no-gateway-here"
    empty.mkdir()
    result = verify(server, uid, data_dir=empty)
    assert result.code == 2, str(result)
    assert "--jwks" in result.stderr, str(result)
    missing_id = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing_id.returncode == 2, missing_id.stderr


def test_id_starting_with_a_dash(server: GatewayProcess) -> None:
    """Upload ids are 22 base64url characters, so one in 64 starts with "-". The
    documented `gateway verify --data-dir D ID` must take such an id as the id, not as
    an unknown option (argparse answers exit 2, "the following arguments are required:
    upload_id"); only `... -- ID` works today."""
    uid = "-" + "Zz" * 10 + "Z"  # well-formed, unknown: the answer must be exit 1
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "verify", "--data-dir", str(server.data_dir), uid],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **server.env},
    )
    result = Result(out.returncode, out.stdout, out.stderr)
    assert result.code == 1, (
        f"`gateway verify --data-dir D {uid}` was not read as an upload id: {result}"
    )
    assert_fails(result, "manifest")
    # With "--" it already works, and is what the other tests use.
    assert_fails(verify(server, uid), "manifest")


@pytest.mark.parametrize("kind", ["missing-file", "not-json", "not-a-jwks", "closed-port"])
def test_unusable_jwks_is_a_usage_error(server: GatewayProcess, tmp_path: Path, kind: str) -> None:
    """A --jwks that cannot be read is a usage problem (exit 2 with a message), not a
    traceback with exit 1, which a script would take for "verification failed"."""
    uid = finished(server, 10)
    path = tmp_path / "jwks.json"
    if kind == "not-json":
        path.write_text("this is not JSON")
    elif kind == "not-a-jwks":
        path.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}))
    source = f"https://127.0.0.1:{free_port()}/jwks.json" if kind == "closed-port" else str(path)
    result = verify(server, uid, "--jwks", source)
    assert "Traceback" not in result.stderr, f"--jwks {kind}: a traceback\n{result}"
    assert result.code == 2, f"--jwks {kind}: want exit 2 (usage), got {result}"
    assert "jwks" in result.stderr.lower(), str(result)


@pytest.mark.parametrize("uid", ["../../x", "AAAA/BBBB", "a b"], ids=["dot-dot", "slash", "space"])
def test_malformed_id_is_a_usage_error(server: GatewayProcess, uid: str) -> None:
    """Not the shape of an upload id: say so (exit 2), do not look it up or crash.
    Today "../../x" ends in a ValueError traceback from the folder store (exit 1)."""
    result = verify(server, uid)
    assert "Traceback" not in result.stderr, f"{uid!r}: a traceback\n{result}"
    assert result.code == 2, f"{uid!r} is not an upload id: want exit 2, got {result}"


def _final_of_two(server: GatewayProcess) -> tuple[str, list[str], bytes]:
    """Two partials and the final concatenating them; returns (final id, part ids, bytes)."""
    pieces = [os.urandom(70_000), os.urandom(1234)]
    part_ids = []
    for piece in pieces:
        url = upload(server, piece, None, **{"Upload-Concat": "partial"})
        part_ids.append(upload_id(url))
    response = httpx.post(
        server.files_url,
        headers={
            **server.auth,
            "Upload-Concat": "final;" + " ".join(f"/files/{p}" for p in part_ids),
        },
    )
    assert response.status_code == 201, response.text
    return upload_id(response.headers["Location"]), part_ids, b"".join(pieces)


def test_a_final_concatenation_verifies_through_its_partials(server: GatewayProcess) -> None:
    final_id, part_ids, data = _final_of_two(server)
    result = verify(server, final_id)
    assert result.code == 0, result
    assert any(c.startswith("ok") and "plaintext" in c and "partials" in c for c in result.checks)
    assert all(any(p in c for c in result.checks) for p in part_ids), result
    manifest = httpx.get(f"{server.files_url}{final_id}/manifest", headers=server.auth)
    assert manifest.status_code == 200
    assert manifest.headers["content-type"].startswith("application/jose")
    assert httpx.get(f"{server.files_url}{final_id}", headers=server.auth).content == data


def test_a_final_made_before_its_partials_finished_verifies(server: GatewayProcess) -> None:
    first, second = os.urandom(70_000), os.urandom(1234)
    done = upload_id(upload(server, first, None, **{"Upload-Concat": "partial"}))
    url = create(server, len(second), **{"Upload-Concat": "partial"})
    response = _final(server, [done, upload_id(url)])
    assert response.status_code == 201, response.text
    final_id = upload_id(response.headers["Location"])
    assert verify(server, final_id).code == 1  # not complete yet: nothing signed to check
    send(server, url, second, 0)
    result = verify(server, final_id)
    assert result.code == 0, result
    assert httpx.get(f"{server.files_url}{final_id}", headers=server.auth).content == first + second


def test_a_damaged_partial_fails_its_final(server: GatewayProcess) -> None:
    final_id, part_ids, _ = _final_of_two(server)
    flip_stored_byte(server.data_dir, data_key(part_ids[1]), -1)
    result = verify(server, final_id)
    assert result.code == 1, result
    assert any(part_ids[1] in f for f in result.failed), result


def test_a_swapped_partial_manifest_fails_its_final(server: GatewayProcess) -> None:
    final_id, part_ids, _ = _final_of_two(server)
    store = store_for(server.data_dir)
    _, jws_key = manifest_keys(part_ids[0])
    _, other_jws = manifest_keys(part_ids[1])
    store.put(jws_key, store.get(other_jws))  # validly signed, but not the pinned one
    result = verify(server, final_id)
    assert result.code == 1, result
    assert any("not the one pinned" in f for f in result.failed), result


def _final(server: GatewayProcess, part_ids: list[str]) -> httpx.Response:
    concat = "final;" + " ".join(f"/files/{p}" for p in part_ids)
    return httpx.post(
        server.files_url, headers={**server.auth, "Upload-Concat": concat}, timeout=60
    )


def _partial(server: GatewayProcess, size: int) -> str:
    return upload_id(upload(server, os.urandom(size), None, **{"Upload-Concat": "partial"}))


def test_a_final_verifies_without_keys_too(server: GatewayProcess) -> None:
    final_id, part_ids, _ = _final_of_two(server)
    result = verify(server, final_id, "--no-decrypt")
    assert result.code == 0, result
    assert all(any(p in c and "records" in c for c in result.checks) for p in part_ids), result
    assert not any(c.startswith("ok") and "plaintext" in c for c in result.checks), result


@pytest.mark.parametrize("times", [2, 1000])
def test_a_final_listing_a_partial_more_than_once_is_400(
    server: GatewayProcess, times: int
) -> None:
    """Answering such a final once cost a decryption of the whole concatenation on the
    shared pool: 1,000 times one partial is 1,000 times its bytes."""
    part, other = _partial(server, 70_000), _partial(server, 10)
    listed = [part, other, part] if times == 2 else [part] * times
    response = _final(server, listed)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "ERR_INVALID_CONCAT"
    assert "more than once" in response.json()["detail"]


def test_the_number_of_partials_is_capped(gateway_factory: Callable[..., GatewayProcess]) -> None:
    server = gateway_factory(**SEG_ENV, GATEWAY_MAX_CONCAT_PARTS="3")
    parts = [_partial(server, 10) for _ in range(4)]
    assert _final(server, parts[:3]).status_code == 201
    response = _final(server, parts)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "ERR_INVALID_CONCAT"
    assert "at most 3" in response.json()["detail"]


def test_a_final_is_built_from_recorded_digests_not_by_reading_its_partials(
    server: GatewayProcess,
) -> None:
    """Creating a final reads no partial's ciphertext: it pins their signed manifests. So a
    partial damaged after it finished does not fail (or slow) the creation; verify finds it."""
    part_ids = [_partial(server, 70_000), _partial(server, 1234)]
    flip_stored_byte(server.data_dir, data_key(part_ids[0]), -1)
    response = _final(server, part_ids)
    assert response.status_code == 201, response.text
    result = verify(server, upload_id(response.headers["Location"]))
    assert result.code == 1, result
    assert any(part_ids[0] in f for f in result.failed), result


# -- the two views of a manifest ------------------------------------------------------------


def test_the_reader_manifest_is_checked_with_keys(server: GatewayProcess) -> None:
    uid = finished(server, 70_000)
    result = verify(server, uid)
    assert_all_ok(result)
    assert any(c.startswith("ok") and "reader manifest" in c for c in result.checks), result
    skipped = verify(server, uid, "--no-decrypt")
    assert any(c.startswith("skip") and "reader manifest" in c for c in skipped.checks), skipped


def test_a_reader_manifest_of_another_upload_fails(server: GatewayProcess) -> None:
    """Sealed under each upload's own data key: moved to another upload, it fails."""
    uid, other = finished(server, 1000), finished(server, 1000)
    store = store_for(server.data_dir)
    store.put(f"{uid}/manifest.sealed", store.get(f"{other}/manifest.sealed"))
    assert_fails(verify(server, uid), "reader")
    assert_all_ok(verify(server, uid, "--no-decrypt"), decrypted=False)


def test_a_version_1_manifest_still_verifies(server: GatewayProcess) -> None:
    """Manifests signed before version 2 carry the plaintext SHA-256 in the stored copy
    and have no reader's manifest: verify and GET /files/{id}/manifest still take them."""
    from gateway import manifest
    from gateway.keys.keyring import LocalKeyring

    data = os.urandom(70_000)
    uid = upload_id(upload(server, data))
    doc = manifest_json(server, uid)
    doc["manifest_version"] = 1
    del doc["view"], doc["plaintext"]["sha256_hmac"]
    key = LocalKeyring.open(server.data_dir / "keyring.json").signing_key()
    store = store_for(server.data_dir)
    json_key, jws_key = manifest_keys(uid)
    store.delete(f"{uid}/manifest.sealed")
    store.put(json_key, manifest.canonical_json(doc))
    store.put(jws_key, manifest.sign(doc, key).encode())
    assert_all_ok(verify(server, uid))
    assert manifest_json(server, uid) == doc
