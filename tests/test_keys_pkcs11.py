"""The PKCS#11 key provider against a real token (SoftHSM2), no mocks."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pkcs11
import pkcs11.util.ec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, ObjectClass

from gateway.config import ConfigError, Settings, export_environment, load_settings
from gateway.keys import pkcs11_objects
from gateway.keys.base import AdministeredProvider, KeyUnusable, WrappedKey
from gateway.keys.pkcs11 import Pkcs11Provider
from gateway.keys.providers import open_provider
from tests.server import free_port
from tests.softhsm import SoftHsmToken

DEK = bytes(range(32))


def _provider(token: SoftHsmToken, prefix: str, **kwargs: object) -> Pkcs11Provider:
    return Pkcs11Provider(
        token.module,
        token.label,
        token.pin,
        kek_label=f"{prefix}kek",
        signing_label=f"{prefix}signing",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def prefix() -> str:
    """Key labels of this test's own: the session shares one token."""
    return f"t{secrets.token_hex(4)}-"


@pytest.fixture
def keys(softhsm: SoftHsmToken, prefix: str) -> Iterator[Pkcs11Provider]:
    provider = _provider(softhsm, prefix)
    provider.init()
    yield provider
    provider.close()


def test_wrap_unwrap_round_trip(keys: Pkcs11Provider, softhsm: SoftHsmToken) -> None:
    wrapped = keys.wrap(DEK, upload_id="u1", dek_id=b"d1")
    assert wrapped.kek_id == keys.kek_id and keys.kek_id.startswith(f"pkcs11:{softhsm.label}/")
    assert wrapped.kek_version == 1
    assert len(wrapped.blob) == 12 + 32 + 16 and DEK not in wrapped.blob
    assert keys.unwrap(wrapped, upload_id="u1", dek_id=b"d1") == DEK
    again = keys.wrap(DEK, upload_id="u1", dek_id=b"d1")
    assert again.blob[:12] != wrapped.blob[:12]  # a fresh IV per wrap
    keys.check()
    assert keys.warnings() == []


def test_a_wrapped_key_is_bound_to_its_upload_dek_id_and_version(keys: Pkcs11Provider) -> None:
    wrapped = keys.wrap(DEK, upload_id="u1", dek_id=b"d1")
    with pytest.raises(KeyUnusable, match="does not verify"):
        keys.unwrap(wrapped, upload_id="u2", dek_id=b"d1")
    with pytest.raises(KeyUnusable, match="does not verify"):
        keys.unwrap(wrapped, upload_id="u1", dek_id=b"d2")
    tampered = bytearray(wrapped.blob)
    tampered[20] ^= 1
    with pytest.raises(KeyUnusable, match="does not verify"):
        keys.unwrap(replace(wrapped, blob=bytes(tampered)), upload_id="u1", dek_id=b"d1")
    with pytest.raises(KeyUnusable, match="unknown KEK version 7"):
        keys.unwrap(replace(wrapped, kek_version=7), upload_id="u1", dek_id=b"d1")
    keys.rotate()
    # Relabelled with a version that exists: the AAD names version 1, so it fails.
    with pytest.raises(KeyUnusable, match="does not verify"):
        keys.unwrap(replace(wrapped, kek_version=2), upload_id="u1", dek_id=b"d1")
    with pytest.raises(KeyUnusable, match="this provider is"):
        keys.unwrap(replace(wrapped, kek_id="local-1234"), upload_id="u1", dek_id=b"d1")
    with pytest.raises(KeyUnusable, match="wrong length"):
        keys.unwrap(replace(wrapped, blob=wrapped.blob[:-1]), upload_id="u1", dek_id=b"d1")


def test_rotation_makes_a_new_current_version_and_old_keys_still_unwrap(
    keys: Pkcs11Provider,
) -> None:
    old = keys.wrap(DEK, upload_id="u1", dek_id=b"d1")
    assert keys.rotate() == 2
    new = keys.wrap(DEK, upload_id="u2", dek_id=b"d2")
    assert new.kek_version == 2
    assert keys.unwrap(old, upload_id="u1", dek_id=b"d1") == DEK
    rewrapped = keys.rewrap(old, upload_id="u1", dek_id=b"d1")
    assert rewrapped.kek_version == 2 and rewrapped.blob != old.blob
    assert keys.unwrap(rewrapped, upload_id="u1", dek_id=b"d1") == DEK
    versions = keys.kek_versions()
    assert [(v.version, v.current) for v in versions] == [(1, False), (2, True)]


def _objects(prefix: str, softhsm: SoftHsmToken) -> list[pkcs11.Object]:
    # This process is logged in already (the provider): a plain session sees private objects.
    session = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label).open()
    kek = list(session.get_objects({Attribute.LABEL: f"{prefix}kek"}))
    signing = list(
        session.get_objects(
            {Attribute.LABEL: f"{prefix}signing", Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        )
    )
    return kek + signing


def test_the_kek_and_the_signing_key_never_leave_the_token(
    keys: Pkcs11Provider, prefix: str, softhsm: SoftHsmToken
) -> None:
    objects = _objects(prefix, softhsm)
    assert len(objects) == 2
    for obj in objects:
        assert obj[Attribute.TOKEN] is True and obj[Attribute.PRIVATE] is True
        assert obj[Attribute.SENSITIVE] is True and obj[Attribute.EXTRACTABLE] is False
        assert obj[Attribute.ALWAYS_SENSITIVE] is True
        assert obj[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            obj[Attribute.VALUE]
    kek = objects[0]
    assert kek[Attribute.VALUE_LEN] == 32 and kek[Attribute.ID] == (1).to_bytes(4, "big")
    assert kek[Attribute.ENCRYPT] is True and kek[Attribute.WRAP] is False


def test_manifests_are_signed_in_the_token_with_ed25519(keys: Pkcs11Provider) -> None:
    signer = keys.signing_key()
    assert signer.alg == "Ed25519" and signer.kid.startswith("ed25519-")
    signature = signer.sign(b"header.payload")
    assert len(signature) == 64
    [published] = keys.public_signing_keys()
    assert published.kid == signer.kid and published.current
    assert isinstance(published.key, Ed25519PublicKey)
    published.key.verify(signature, b"header.payload")


def test_es256_where_the_token_lacks_eddsa(softhsm: SoftHsmToken, prefix: str) -> None:
    keys = _provider(softhsm, prefix, signing_alg="ES256")
    try:
        keys.init()
        signer = keys.signing_key()
        assert signer.alg == "ES256" and signer.kid.startswith("es256-")
        signature = signer.sign(b"header.payload")
        assert len(signature) == 64  # JWS form: r || s
        [published] = keys.public_signing_keys()
        assert isinstance(published.key, ec.EllipticCurvePublicKey)
        assert published.key.curve.name == "secp256r1"
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        der = utils.encode_dss_signature(r, s)
        published.key.verify(der, b"header.payload", ec.ECDSA(hashes.SHA256()))
    finally:
        keys.close()


def test_rotate_and_retire_signing_keys(keys: Pkcs11Provider) -> None:
    first = keys.signing_key().kid
    second = keys.rotate_signing()
    assert second != first and keys.signing_key().kid == second
    states = {k.kid: k.state for k in keys.signing_keys()}
    assert states == {first: "published", second: "signing"}
    assert [(k.kid, k.current) for k in keys.public_signing_keys()] == [
        (second, True),
        (first, False),
    ]
    with pytest.raises(KeyUnusable, match="current signing key"):
        keys.retire_signing(second)
    with pytest.raises(KeyUnusable, match="no signing key 'nope'"):
        keys.retire_signing("nope")
    keys.retire_signing(first)
    assert {k.kid: k.state for k in keys.signing_keys()} == {first: "retired", second: "signing"}
    assert [k.kid for k in keys.public_signing_keys()] == [second]


def test_init_creates_only_what_is_missing(softhsm: SoftHsmToken, prefix: str) -> None:
    keys = _provider(softhsm, prefix)
    try:
        created = keys.init()
        assert len(created) == 2
        assert f"KEK {prefix}kek version 1" in created
        assert keys.init() == []
        assert [v.version for v in keys.kek_versions()] == [1]
        assert len(keys.signing_keys()) == 1
    finally:
        keys.close()


def test_missing_keys_are_refused_with_the_command_that_makes_them(
    softhsm: SoftHsmToken, prefix: str
) -> None:
    keys = _provider(softhsm, prefix)
    try:
        with pytest.raises(KeyUnusable, match="gateway keys init") as info:
            keys.check()
        assert softhsm.label in str(info.value) and f"{prefix}kek" in str(info.value)
        with pytest.raises(KeyUnusable, match="gateway keys init"):
            keys.wrap(DEK, upload_id="u", dek_id=b"d")
        with pytest.raises(KeyUnusable, match="gateway keys init"):
            keys.signing_key()
    finally:
        keys.close()


def _serve(env: dict[str, str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_serve_refuses_a_token_without_keys(
    softhsm: SoftHsmToken, prefix: str, tmp_path: Path
) -> None:
    out = _serve(softhsm.env(prefix), tmp_path / "data")
    assert out.returncode == 2
    assert "gateway keys init" in out.stderr and softhsm.label in out.stderr
    assert "Traceback" not in out.stderr


def test_a_wrong_pin_is_refused_and_never_shown(
    softhsm: SoftHsmToken, prefix: str, tmp_path: Path
) -> None:
    wrong = "wrong-pin-4242"
    env = {**softhsm.env(prefix), "GATEWAY_PKCS11_PIN_FILE": "", "GATEWAY_PKCS11_PIN": wrong}
    out = _serve(env, tmp_path / "data")
    assert out.returncode == 2
    assert "PIN is not correct" in out.stderr and softhsm.label in out.stderr
    assert wrong not in out.stderr and "Traceback" not in out.stderr


def test_keys_changed_by_another_provider_are_picked_up(softhsm: SoftHsmToken, prefix: str) -> None:
    serving = _provider(softhsm, prefix, refresh_seconds=0.3)
    admin = _provider(softhsm, prefix)
    try:
        admin.init()
        serving.refresh()
        first_kid = serving.signing_key().kid
        assert serving.wrap(DEK, upload_id="u", dek_id=b"d").kek_version == 1
        admin.rotate()
        new_kid = admin.rotate_signing()
        # Unwrapping under a version it has not seen re-lists at once.
        by_admin = admin.wrap(DEK, upload_id="u", dek_id=b"d")
        assert serving.unwrap(by_admin, upload_id="u", dek_id=b"d") == DEK
        time.sleep(0.4)
        assert serving.wrap(DEK, upload_id="u", dek_id=b"d").kek_version == 2
        assert serving.signing_key().kid == new_kid
        admin.retire_signing(first_kid)
        time.sleep(0.4)
        assert [k.kid for k in serving.public_signing_keys()] == [new_kid]
    finally:
        serving.close()
        admin.close()


def test_many_threads_wrap_unwrap_and_sign_at_once(keys: Pkcs11Provider) -> None:
    errors: list[BaseException] = []
    public = keys.public_signing_keys()[0].key
    assert isinstance(public, Ed25519PublicKey)

    def work(n: int) -> None:
        try:
            for i in range(40):
                dek = os.urandom(32)
                uid = f"u{n}-{i}"
                wrapped = keys.wrap(dek, upload_id=uid, dek_id=b"d")
                assert keys.unwrap(wrapped, upload_id=uid, dek_id=b"d") == dek
                if i % 8 == 0:
                    message = uid.encode()
                    public.verify(keys.signing_key().sign(message), message)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_settings_for_pkcs11(tmp_path: Path, softhsm: SoftHsmToken) -> None:
    base = {"data_dir": tmp_path, "key_provider": "pkcs11"}
    with pytest.raises(ConfigError, match="GATEWAY_PKCS11_MODULE"):
        load_settings(base, environ={})
    full = {**base, "pkcs11_module": softhsm.module, "pkcs11_token": softhsm.label}
    with pytest.raises(ConfigError, match="exactly one of GATEWAY_PKCS11_PIN"):
        load_settings(full, environ={})
    with pytest.raises(ConfigError, match="exactly one of GATEWAY_PKCS11_PIN"):
        load_settings({**full, "pkcs11_pin": "1", "pkcs11_pin_file": "x"}, environ={})
    loose = tmp_path / "pin"
    loose.write_text("s3cret-pin\n")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_settings({**full, "pkcs11_pin_file": str(loose)}, environ={})
    assert "s3cret-pin" not in str(info.value)
    with pytest.raises(ConfigError, match="key_provider must be"):
        load_settings({"data_dir": tmp_path, "key_provider": "vault"}, environ={})
    env = {
        "GATEWAY_KEY_PROVIDER": "pkcs11",
        "GATEWAY_PKCS11_MODULE": softhsm.module,
        "GATEWAY_PKCS11_TOKEN": softhsm.label,
        "GATEWAY_PKCS11_PIN": "s3cret-pin",
        "GATEWAY_REQUIRE_PROTECTED_KEYS": "true",  # a token satisfies it, no KEK file
    }
    settings = load_settings({"data_dir": tmp_path}, environ=env)
    assert settings.pkcs11_user_pin() == "s3cret-pin"
    assert settings.pkcs11_kek_label == "gateway-kek"
    assert settings.pkcs11_signing_label == "gateway-signing"
    assert "s3cret-pin" not in repr(settings)
    assert "s3cret-pin" not in str(export_environment(settings))
    from_file = load_settings(
        {"data_dir": tmp_path, "pkcs11_pin": ""},
        environ={**env, "GATEWAY_PKCS11_PIN": "", "GATEWAY_PKCS11_PIN_FILE": str(softhsm.pin_file)},
    )
    assert from_file.pkcs11_user_pin() == softhsm.pin
    assert Settings().key_provider == "keyring"


def test_open_provider_picks_the_configured_one(
    tmp_path: Path, softhsm: SoftHsmToken, prefix: str
) -> None:
    env = {k: v for k, v in softhsm.env(prefix).items() if k.startswith("GATEWAY_")}
    provider = open_provider(load_settings({"data_dir": tmp_path}, environ=env))
    assert isinstance(provider, Pkcs11Provider)
    administered: AdministeredProvider = provider  # what `gateway keys ...` drives
    assert administered.kek_versions() == []
    assert provider.kek_id == f"pkcs11:{softhsm.label}/{prefix}gateway-kek"
    provider.close()
    keyring = open_provider(load_settings({"data_dir": tmp_path}, environ={}))
    assert keyring.kek_id.startswith("local-")
    assert isinstance(keyring.wrap(DEK, upload_id="u", dek_id=b"d"), WrappedKey)


def test_clear_errors_for_a_wrong_module_token_or_use(softhsm: SoftHsmToken, prefix: str) -> None:
    with pytest.raises(KeyUnusable, match="no such token") as info:
        Pkcs11Provider(softhsm.module, "no-such-token", softhsm.pin)
    assert softhsm.pin not in str(info.value)
    with pytest.raises(KeyUnusable, match="cannot load the module"):
        Pkcs11Provider("/nonexistent/libpkcs11.so", softhsm.label, softhsm.pin)
    with pytest.raises(ValueError, match="signing_alg"):
        _provider(softhsm, prefix, signing_alg="RS256")
    keys = _provider(softhsm, prefix)
    keys.init()
    assert softhsm.pin not in repr(keys) and keys.kek_id in repr(keys)
    with pytest.raises(ValueError, match="32 bytes"):
        keys.wrap(b"short", upload_id="u", dek_id=b"d")
    keys.close()
    with pytest.raises(KeyUnusable, match="closed"):
        keys.wrap(DEK, upload_id="u", dek_id=b"d")


def test_a_key_destroyed_by_another_process_is_looked_up_again(
    softhsm: SoftHsmToken, prefix: str
) -> None:
    serving = _provider(softhsm, prefix, refresh_seconds=3600)
    admin = _provider(softhsm, prefix)
    try:
        serving.init()
        old = serving.signing_key()
        old.sign(b"x")  # its object is now found and kept
        admin.refresh()
        admin.rotate_signing()
        admin.retire_signing(old.kid)
        # `serving` has not listed again: it still signs with `old`, whose object is gone.
        with pytest.raises(KeyUnusable, match="no key labelled"):
            serving.signing_key().sign(b"x")
        serving.refresh()
        assert serving.signing_key().kid != old.kid
        serving.signing_key().sign(b"x")
    finally:
        serving.close()
        admin.close()


def test_signing_keys_not_made_here_sort_first(softhsm: SoftHsmToken, prefix: str) -> None:
    keys = _provider(softhsm, prefix)
    try:
        keys.init()
        session = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label).open(rw=True)
        params = pkcs11.util.ec.encode_named_curve_parameters("secp256r1")
        session.generate_keypair(
            pkcs11.KeyType.EC,
            id=b"imported",
            label=f"{prefix}signing",
            store=True,
            public_template={Attribute.EC_PARAMS: params},
        )
        session.close()
        keys.refresh()
        infos = keys.signing_keys()
        assert (infos[0].kid, infos[0].created) == ("imported", None)
        assert infos[-1].state == "signing" and infos[-1].created is not None
    finally:
        keys.close()


@pytest.mark.parametrize(
    ("key_type", "point", "error"),
    [
        (pkcs11.KeyType.EC_EDWARDS, b"\x05\x20" + bytes(32), "not a DER OCTET STRING"),
        (pkcs11.KeyType.EC_EDWARDS, b"\x04\x21" + bytes(32), "not a DER OCTET STRING"),
        (pkcs11.KeyType.RSA, b"", "neither Ed25519 nor EC"),
    ],
)
def test_unreadable_public_keys_are_named(
    key_type: pkcs11.KeyType, point: bytes, error: str
) -> None:
    fake = {Attribute.KEY_TYPE: key_type, Attribute.EC_POINT: point}  # a unit test's object
    with pytest.raises(ValueError, match=error):
        pkcs11_objects.public_key(fake)


def test_a_bare_ec_point_is_read_too() -> None:
    public = Ed25519PublicKey.from_public_bytes(bytes(range(32)))
    raw = public.public_bytes_raw()
    fake = {Attribute.KEY_TYPE: pkcs11.KeyType.EC_EDWARDS, Attribute.EC_POINT: raw}
    alg, key = pkcs11_objects.public_key(fake)
    assert alg == "Ed25519" and isinstance(key, Ed25519PublicKey)
    assert key.public_bytes_raw() == raw


def test_two_rotations_at_once_lose_no_key(softhsm: SoftHsmToken, prefix: str) -> None:
    """Two `keys rotate` at once both make a version 2 (a token has no lock to serialise
    them). Gateways may wrap under either object; every wrapped key still unwraps, with
    nothing for an operator to destroy."""
    first = _provider(softhsm, prefix, refresh_seconds=3600)
    second = _provider(softhsm, prefix, refresh_seconds=3600)
    try:
        first.init()
        second.refresh()
        assert first.rotate() == 2
        under_first = first.wrap(DEK, upload_id="u1", dek_id=b"d1")  # its object is kept
        # The other rotation read the token before the first one wrote: version 2 again.
        with (
            pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label).open(rw=True) as session
        ):
            pkcs11_objects.generate_kek(session, f"{prefix}kek", 2)
        second.refresh()
        under_second = second.wrap(DEK, upload_id="u2", dek_id=b"d2")
        for provider in (first, second, _provider(softhsm, prefix)):
            provider.refresh()
            for upload_id, dek_id, wrapped in (
                ("u1", b"d1", under_first),
                ("u2", b"d2", under_second),
            ):
                assert wrapped.kek_version == 2
                assert provider.unwrap(wrapped, upload_id=upload_id, dek_id=dek_id) == DEK
            with pytest.raises(KeyUnusable, match="does not verify"):
                provider.unwrap(under_first, upload_id="u2", dek_id=b"d1")
    finally:
        first.close()
        second.close()


def test_signing_keys_made_in_the_same_second_get_their_own_kids(
    softhsm: SoftHsmToken, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `keys rotate-signing` at once: each key pair has its own kid, so the JWKS
    publishes each public key and each signature verifies with its own."""
    monkeypatch.setattr("time.time", lambda: 1_800_000_000.5)
    first = _provider(softhsm, prefix)
    second = _provider(softhsm, prefix)
    try:
        first.init()
        second.refresh()
        kid_a = first.rotate_signing()
        kid_b = second._generate_pair(second._listing)  # listed before kid_a was made
        first.refresh()
        infos = first.signing_keys()
        assert len(infos) == 3 and kid_a != kid_b
        assert [i.created for i in infos][1:] == ["2027-01-15T08:00:01+00:00"] * 2
        assert infos[0].created == "2027-01-15T08:00:00+00:00"
        assert len(first.public_signing_keys()) == 3  # each public half, by its own kid
    finally:
        first.close()
        second.close()
