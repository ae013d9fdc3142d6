"""Tests for gateway.jws: compact JWS with Ed25519 and ES256, JWKs and JWK Sets."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws
from joserfc.jwk import ECKey, KeySet

from gateway import jws
from gateway.jws import Ed25519SigningKey, JWSError, PublicSigningKey

# RFC 8032 section 7.1, TEST 1.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED = Ed25519SigningKey("ed-1", Ed25519PrivateKey.from_private_bytes(SEED))
OTHER_ED = Ed25519SigningKey("ed-2", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
TYP = "test+jws"


@dataclass(frozen=True)
class ES256Key:
    """An ES256 `SigningKey` as a token would be: it signs, the private half stays put."""

    kid: str
    private: ec.EllipticCurvePrivateKey

    @property
    def alg(self) -> str:
        return jws.ALG_ES256

    def sign(self, data: bytes) -> bytes:
        return jws.es256_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))

    def public(self, *, current: bool = True) -> PublicSigningKey:
        return PublicSigningKey(self.kid, jws.ALG_ES256, self.private.public_key(), current)


ES = ES256Key("es-1", ec.generate_private_key(ec.SECP256R1()))


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip_with_both_algorithms() -> None:
    for key in (ED, ES):
        token = jws.sign(b'{"a":1}', typ=TYP, key=key)
        assert jws.header_of(token) == {"alg": key.alg, "kid": key.kid, "typ": TYP}
        keys = {ED.kid: ED.public(), ES.kid: ES.public()}
        assert jws.verify(token, typ=TYP, keys=keys) == (key.kid, b'{"a":1}')
        assert jws.payload_of(token) == b'{"a":1}'


def test_a_key_answers_only_to_its_own_algorithm() -> None:
    # An ES256 header naming an Ed25519 key (or the reverse) is refused before any check.
    token = jws.sign(b"{}", typ=TYP, key=ES)
    swapped = {ES.kid: PublicSigningKey(ES.kid, jws.ALG_ED25519, ED.private.public_key())}
    with pytest.raises(JWSError, match="unsupported alg 'ES256' for key"):
        jws.verify(token, typ=TYP, keys=swapped)


def test_typ_must_match() -> None:
    token = jws.sign(b"{}", typ="imgw-manifest+jws", key=ED)
    with pytest.raises(JWSError, match="wrong typ"):
        jws.verify(token, typ="imgw-deletion-receipt+jws", keys={ED.kid: ED.public()})


def test_es256_signature_is_checked() -> None:
    token = jws.sign(b'{"a":1}', typ=TYP, key=ES)
    h, _, s = token.split(".")
    other = ES256Key(ES.kid, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(JWSError, match="bad signature"):
        jws.verify(token, typ=TYP, keys={ES.kid: other.public()})
    tampered = ".".join((h, b64u(b'{"a":2}'), s))
    with pytest.raises(JWSError, match="bad signature"):
        jws.verify(tampered, typ=TYP, keys={ES.kid: ES.public()})


def test_signing_key_must_give_64_bytes() -> None:
    @dataclass(frozen=True)
    class Short:
        kid: str = "short"
        alg: str = jws.ALG_ED25519

        def sign(self, data: bytes) -> bytes:
            return b"x" * 63

    with pytest.raises(ValueError, match="63 bytes"):
        jws.sign(b"{}", typ=TYP, key=Short())


# --- JWK / JWKS -----------------------------------------------------------------------------


def test_jwk_is_an_rfc8037_okp_key() -> None:
    x = ED.private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert jws.jwk(ED.public()) == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64u(x),
        "kid": "ed-1",
        "alg": "Ed25519",
        "use": "sig",
        "key_ops": ["verify"],
    }
    # RFC 8032 section 7.1 TEST 1 public key, in RFC 8037 appendix A.2 form.
    assert jws.jwk(ED.public())["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert jws.jwk(ED.public(current=False)) == jws.jwk(ED.public())


def test_jwk_of_a_p256_key() -> None:
    entry = jws.jwk(ES.public())
    numbers = ES.private.public_key().public_numbers()
    assert entry["kty"] == "EC" and entry["crv"] == "P-256" and entry["alg"] == "ES256"
    assert entry["x"] == b64u(numbers.x.to_bytes(32, "big"))
    assert entry["y"] == b64u(numbers.y.to_bytes(32, "big"))


def test_jwks_orders_current_first_and_round_trips() -> None:
    doc = jws.jwks([OTHER_ED.public(current=False), ED.public(), ES.public(current=False)])
    assert [k["kid"] for k in doc["keys"]] == ["ed-1", "ed-2", "es-1"]  # type: ignore[attr-defined]
    keys = jws.keys_from_jwks(json.loads(json.dumps(doc)))
    assert set(keys) == {"ed-1", "ed-2", "es-1"}
    for key in (ED, OTHER_ED, ES):
        token = jws.sign(b"{}", typ=TYP, key=key)
        assert jws.verify(token, typ=TYP, keys=keys)[0] == key.kid
    with pytest.raises(ValueError, match="duplicate"):
        jws.jwks([ED.public(), ED.public(current=False)])


def test_keys_from_jwks_skips_other_key_types() -> None:
    doc = jws.jwks([ED.public()])
    doc["keys"] = [
        {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64u(bytes(32))},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        {**jws.jwk(Ed25519SigningKey("eddsa", ED.private).public()), "alg": "EdDSA"},
        {**jws.jwk(Ed25519SigningKey("enc", ED.private).public()), "use": "enc"},
        *doc["keys"],  # type: ignore[misc]
    ]
    assert list(jws.keys_from_jwks(doc)) == ["ed-1"]


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "OKP", "crv": "Ed25519", "x": b64u(bytes(32))},  # no kid
        {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64u(bytes(31))},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64u(bytes(32)) + "="},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64u(bytes(32)), "d": b64u(SEED)},
        {"kty": "EC", "crv": "P-256", "kid": "k", "x": b64u(bytes(32))},  # no y
        {"kty": "EC", "crv": "P-256", "kid": "k", "x": b64u(bytes(32)), "y": b64u(bytes(32))},
        "not a key",
    ],
)
def test_keys_from_jwks_is_strict(entry: object) -> None:
    with pytest.raises(JWSError):
        jws.keys_from_jwks({"keys": [entry]})


def test_keys_from_jwks_rejects_duplicate_kids_and_missing_keys() -> None:
    with pytest.raises(JWSError, match="twice"):
        jws.keys_from_jwks({"keys": [jws.jwk(ED.public()), jws.jwk(ED.public())]})
    with pytest.raises(JWSError):
        jws.keys_from_jwks({})


def test_joserfc_verifies_our_es256() -> None:
    token = jws.sign(b'{"a":1}', typ=TYP, key=ES)
    key_set = KeySet.import_key_set(jws.jwks([ES.public()]))  # type: ignore[arg-type]
    obj = jose_jws.deserialize_compact(token, key_set, algorithms=["ES256"])
    assert obj.payload == b'{"a":1}'


def test_we_verify_an_es256_jws_made_by_joserfc() -> None:
    pem = ES.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = jose_jws.serialize_compact(
        {"alg": "ES256", "kid": ES.kid, "typ": TYP},
        b'{"a":1}',
        ECKey.import_key(pem),
        algorithms=["ES256"],
    )
    assert jws.verify(token, typ=TYP, keys={ES.kid: ES.public()}) == (ES.kid, b'{"a":1}')
