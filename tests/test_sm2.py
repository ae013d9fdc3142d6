"""SM2 signatures of suite-2 manifests (gateway/sm2.py, MANIFEST.md "SM2"): sign and
verify, the JWK and PEM forms, and a second, independent implementation (OpenSSL 3's
command line) agreeing with the gateway's (GmSSL) both ways."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway import jws, manifest, sm2
from gateway.jws import PublicSigningKey
from gateway.sm2 import Sm2Error, Sm2PublicKey, Sm2SigningKey
from tests.test_manifest import make

N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123


def new_key(kid: str = "sm2-test") -> Sm2SigningKey:
    private, public = sm2.generate()
    return Sm2SigningKey(kid, private, Sm2PublicKey(public))


def public(key: Sm2SigningKey) -> PublicSigningKey:
    return PublicSigningKey(key.kid, sm2.ALG_SM2, key.public_key)


def suite2() -> dict[str, object]:
    """A suite-2 manifest as build_manifest makes it."""
    return make(suite=manifest.SUITE_SM)


# -- the primitive -----------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    key = new_key()
    signature = key.sign(b"the manifest")
    assert len(signature) == sm2.SIGNATURE_LEN
    key.public_key.verify(signature, b"the manifest")
    assert key.sign(b"the manifest") != signature  # a fresh k every time


def test_a_changed_message_fails() -> None:
    key = new_key()
    signature = key.sign(b"the manifest")
    with pytest.raises(Sm2Error, match="bad signature"):
        key.public_key.verify(signature, b"the manifesT")


def test_another_key_fails() -> None:
    signature = new_key().sign(b"the manifest")
    with pytest.raises(Sm2Error, match="bad signature"):
        new_key().public_key.verify(signature, b"the manifest")


@pytest.mark.parametrize(
    "signature",
    [b"", bytes(63), bytes(64), N.to_bytes(32, "big") * 2, b"\xff" * 64],
    ids=["empty", "short", "zero", "r-s-equal-n", "above-n"],
)
def test_malformed_signatures_fail(signature: bytes) -> None:
    with pytest.raises(Sm2Error):
        new_key().public_key.verify(signature, b"m")


def test_a_point_off_the_curve_is_refused() -> None:
    raw = bytearray(new_key().public_key.raw)
    raw[-1] ^= 1
    with pytest.raises(Sm2Error, match="not a point"):
        Sm2PublicKey(bytes(raw))
    with pytest.raises(Sm2Error, match="64 bytes"):
        Sm2PublicKey(b"\x04" + bytes(raw))


def test_a_private_key_out_of_range_is_refused() -> None:
    key = new_key()
    for scalar in (0, N - 1, N):
        with pytest.raises(Sm2Error):
            Sm2SigningKey("k", scalar.to_bytes(32, "big"), key.public_key)
    assert "private" not in repr(key) and key.private.hex() not in repr(key)


# -- JWK, PEM ----------------------------------------------------------------------------------


def test_the_jwk_round_trips() -> None:
    key = new_key("sm2-a")
    entry = jws.jwk(public(key))
    assert {k: entry[k] for k in ("kty", "crv", "alg", "kid", "use")} == {
        "kty": "EC",
        "crv": "SM2",
        "alg": "SM2-SM3",
        "kid": "sm2-a",
        "use": "sig",
    }
    assert entry["key_ops"] == ["verify"] and "d" not in entry
    keys = jws.keys_from_jwks(jws.jwks([public(key)]))
    token = manifest.sign_sm2(suite2(), key)
    assert manifest.verify_sm2(token, keys)["suite"] == 2


def test_a_jwk_off_the_curve_is_an_error() -> None:
    entry = jws.jwk(public(new_key("sm2-a")))
    y = bytearray(base64.urlsafe_b64decode(str(entry["y"]) + "="))
    y[-1] ^= 1
    entry["y"] = base64.urlsafe_b64encode(bytes(y)).rstrip(b"=").decode()
    with pytest.raises(jws.JWSError, match="not a point on the SM2 curve"):
        jws.keys_from_jwks({"keys": [entry]})


def test_pem_is_a_subject_public_key_info_openssl_reads(tmp_path: Path) -> None:
    key = new_key()
    bundle = sm2.pem_bundle([("sm2-a", key.public_key), ("sm2-b", new_key().public_key)])
    assert bundle.startswith("kid: sm2-a\n-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "keys.pem").write_text(bundle)
    out = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(tmp_path / "keys.pem"), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert out == key.public_key.spki_der()  # the first block: the current key
    text = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(tmp_path / "keys.pem"), "-text", "-noout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SM2" in text


# -- the SM2 form of a manifest ----------------------------------------------------------------


def test_only_a_suite_2_manifest_is_signed_with_sm2() -> None:
    with pytest.raises(ValueError, match="suite-2"):
        manifest.sign_sm2(make(), new_key())


def test_the_sm2_form_signs_the_same_payload_as_the_jws() -> None:
    key = new_key()
    doc = suite2()
    token = manifest.sign_sm2(doc, key)
    header = jws.header_of(token)
    assert header == {"alg": "SM2-SM3", "kid": key.kid, "typ": "imgw-manifest+sm2"}
    assert manifest.payload(token) == manifest.canonical_json(doc)
    assert manifest.verify_sm2(token, {key.kid: public(key)}) == doc


def test_a_tampered_sm2_form_fails() -> None:
    key = new_key()
    token = manifest.sign_sm2(suite2(), key)
    head, body, sig = token.split(".")
    other = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    other["plaintext"]["size"] += 1
    forged = f"{head}.{jws.b64url(manifest.canonical_json(other))}.{sig}"
    with pytest.raises(manifest.ManifestError, match="bad signature"):
        manifest.verify_sm2(forged, {key.kid: public(key)})
    with pytest.raises(manifest.ManifestError, match="unknown kid"):
        manifest.verify_sm2(token, {"other": public(new_key("other"))})
    with pytest.raises(manifest.ManifestError, match="bad signature"):
        manifest.verify_sm2(token, {key.kid: public(new_key(key.kid))})


def test_no_algorithm_confusion_between_the_two_forms() -> None:
    """An SM2 form never passes as the JWS, a JWS never as the SM2 form, and an SM2 key
    never verifies a JWS even under its own alg."""
    key = new_key()
    token = manifest.sign_sm2(suite2(), key)
    with pytest.raises(manifest.ManifestError, match="unsupported alg 'SM2-SM3'"):
        manifest.verify(token, {key.kid: public(key)})
    with pytest.raises(ValueError, match="unsupported alg"):
        jws.sign(b"{}", typ="t", key=key)
    with pytest.raises(manifest.ManifestError, match="wrong typ"):
        forged_typ = jws.sign(
            manifest.canonical_json(suite2()),
            typ=manifest.JWS_TYP,
            key=key,
            algorithms=jws.SM2_ALGORITHMS,
        )
        manifest.verify_sm2(forged_typ, {key.kid: public(key)})


# -- a second implementation: OpenSSL 3 --------------------------------------------------------


def _openssl_verify(tmp_path: Path, pem: str, signing_input: bytes, der: bytes) -> bool:
    (tmp_path / "pub.pem").write_text(pem)
    (tmp_path / "input").write_bytes(signing_input)
    (tmp_path / "sig.der").write_bytes(der)
    command = (
        f"openssl pkeyutl -verify -pubin -inkey {tmp_path / 'pub.pem'} -rawin -digest sm3 "
        f"-pkeyopt distid:{sm2.DISTID.decode()} -in {tmp_path / 'input'} "
        f"-sigfile {tmp_path / 'sig.der'}"
    )
    out = subprocess.run(
        command.split(),
        capture_output=True,
        text=True,
    )
    return out.returncode == 0 and "Signature Verified Successfully" in out.stdout


def test_openssl_verifies_the_gateways_sm2_manifest(tmp_path: Path) -> None:
    key = new_key()
    token = manifest.sign_sm2(suite2(), key)
    head, body, sig = token.split(".")
    raw = jws.b64url_decode(sig, "signature")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signing_input = f"{head}.{body}".encode("ascii")
    assert _openssl_verify(tmp_path, key.public_key.pem(), signing_input, der)
    assert not _openssl_verify(tmp_path, key.public_key.pem(), signing_input + b" ", der)
    assert not _openssl_verify(tmp_path, new_key().public_key.pem(), signing_input, der)


def test_the_gateway_verifies_what_openssl_signs(tmp_path: Path) -> None:
    """The other direction: both compute Z from the same signer ID and key."""
    pem = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-out", str(pem)], check=True)
    spki = subprocess.run(
        ["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    message = manifest.canonical_json(suite2())
    (tmp_path / "m").write_bytes(message)
    command = (
        f"openssl pkeyutl -sign -inkey {pem} -rawin -digest sm3 "
        f"-pkeyopt distid:{sm2.DISTID.decode()} -in {tmp_path / 'm'}"
    )
    der = subprocess.run(
        command.split(),
        capture_output=True,
        check=True,
    ).stdout
    r, s = decode_dss_signature(der)
    key = Sm2PublicKey(spki[-64:])
    assert spki == key.spki_der()
    key.verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), message)
    with pytest.raises(Sm2Error):
        key.verify(r.to_bytes(32, "big") + s.to_bytes(32, "big"), message + b"x")
