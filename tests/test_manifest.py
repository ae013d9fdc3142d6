"""Tests for gateway.manifest: RFC 8785 JSON, RFC 6962 roots, the JWS, and a second JOSE library."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws as jose_jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from gateway import jws
from gateway import manifest as m
from gateway.jws import Ed25519SigningKey
from gateway.manifest import ManifestError

# RFC 8032 section 7.1, TEST 1: a fixed key keeps signatures (Ed25519 is deterministic)
# reproducible across runs.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUB = KEY.public_key()
KID = "gw-2026-01"
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = Ed25519SigningKey(KID, KEY)
KEYS = {KID: SIGNER.public()}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def records(n: int) -> list[bytes]:
    return [sha(b"record %d" % i) for i in range(n)]


def upload(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "a1b2c3",
        "created": "2026-03-01T10:00:00Z",
        "completed": "2026-03-01T10:05:42.125Z",
        "uploader": {"principal": "alice", "tenant": "clinic-7"},
        "length": 200_000,
        "client_checksum": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
    }
    base.update(over)
    return base


STORAGE: dict[str, object] = {
    "key": "uploads/a1b2c3/data",
    "size": 200_000 + 4 * 28 + 110,
    "part_size": 65_536,
    "part_count": 4,
    "store": "folder",
}
ENCRYPTION: dict[str, object] = {
    "segment_size": 65_536,
    "segment_count": 4,
    "header_sha256": "ab" * 32,
    "dek_id": "01" * 16,
    "kek_id": "local-1",
    "kek_version": 3,
}


def make(**over: Any) -> dict[str, object]:
    args: dict[str, Any] = {
        "upload": upload(),
        "storage": dict(STORAGE),
        "encryption": dict(ENCRYPTION),
        "plaintext_size": 200_000,
        "plaintext_sha256": sha(b"plaintext"),
        "plaintext_sha256_hmac": sha(b"keyed"),
        "record_sha256": records(4),
        "retention": {"policy": "default", "delete_after": "2036-03-01T00:00:00Z"},
        "signer_kid": KID,
    }
    args.update(over)
    return m.build_manifest(**args)


def raw_jws(header: object, payload: bytes, key: Ed25519PrivateKey = KEY) -> str:
    """A JWS assembled by hand, so that malformed headers and payloads can be signed."""
    h = b64u(json.dumps(header).encode()) if not isinstance(header, bytes) else b64u(header)
    p = b64u(payload)
    return f"{h}.{p}.{b64u(key.sign(f'{h}.{p}'.encode()))}"


GOOD_HEADER = {"alg": "Ed25519", "kid": KID, "typ": m.JWS_TYP}


# --- canonical_json -------------------------------------------------------------------------


def test_rfc8785_property_sorting_example() -> None:
    # RFC 8785 section 3.2.3: sorted by UTF-16 code units, so U+1F600 (D83D DE00)
    # sorts before U+FB33 although its code point is larger.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert m.canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_string_and_literals_example() -> None:
    # RFC 8785 section 3.2.2 example, without its "numbers" member (floats are out of scope).
    source = r'{"string": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/",'
    source += ' "literals": [null, true, false]}'
    expected = r'{"literals":[null,true,false],"string":"' + "\u20ac" + r"$\u000f\nA"
    expected += "'" + r'B\"\\\\\"/"}'
    assert m.canonical_json(json.loads(source)) == expected.encode("utf-8")


def jcs_string(s: str) -> str:
    """RFC 8785 section 3.2.2.2 string serialization, written out by hand."""
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def test_string_escaping_matches_jcs_for_every_ascii_and_some_beyond() -> None:
    samples = [chr(c) for c in range(0x80)]
    samples += ["\u0080", "\u009f", "\u00e9", "\u2028", "\u2029", "\ufeff", "\U0001f600", "/"]
    for ch in samples:
        assert m.canonical_json(ch) == jcs_string(ch).encode("utf-8"), repr(ch)
    assert m.canonical_json("\x00\x1f\x7f") == b'"\\u0000\\u001f\x7f"'
    assert m.canonical_json('a"b\\c') == b'"a\\"b\\\\c"'
    # Non-ASCII stays literal UTF-8, never \u-escaped.
    assert m.canonical_json("Gr\u00fc\u00dfe \u20ac") == '"Gr\u00fc\u00dfe \u20ac"'.encode()


def test_nested_values_and_literals() -> None:
    value = {"b": [1, -2, {"z": None, "a": True}], "a": {"y": False, "x": ""}, "c": []}
    assert m.canonical_json(value) == (
        b'{"a":{"x":"","y":false},"b":[1,-2,{"a":true,"z":null}],"c":[]}'
    )
    assert m.canonical_json({}) == b"{}"
    assert m.canonical_json(0) == b"0"
    assert m.canonical_json(2**53 - 1) == b"9007199254740991"
    assert m.canonical_json(-(2**53 - 1)) == b"-9007199254740991"


@pytest.mark.parametrize(
    "bad",
    [
        1.0,
        0.5,
        float("nan"),
        {"a": [1, 2.5]},
        2**53,
        -(2**53),
        {1: "int key"},
        (1, 2),
        b"bytes",
        {"s": {1, 2}},
        "\ud800",  # lone surrogate: not valid I-JSON
    ],
)
def test_rejects_what_the_subset_excludes(bad: object) -> None:
    with pytest.raises(ValueError):
        m.canonical_json(bad)


# --- merkle_root ----------------------------------------------------------------------------


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, transcribed independently of gateway.manifest."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256().digest()
    if n == 1:
        return hashlib.sha256(bytes([0]) + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(
        bytes([1]) + reference_mth(leaves[:k]) + reference_mth(leaves[k:])
    ).digest()


def bottom_up(leaves: list[bytes]) -> bytes:
    """Level by level, an odd last node moves up unchanged: the same tree as RFC 6962."""
    if not leaves:
        return sha(b"")
    level = [sha(b"\x00" + leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8])
def test_merkle_root_matches_reference(n: int) -> None:
    leaves = records(n)
    assert m.merkle_root(leaves) == reference_mth(leaves) == bottom_up(leaves)


def test_merkle_root_larger_trees() -> None:
    leaves = records(70)
    for n in range(70):
        assert m.merkle_root(leaves[:n]) == bottom_up(leaves[:n]), n


def test_merkle_root_certificate_transparency_vectors() -> None:
    # The RFC 6962 reference vectors of Certificate Transparency's merkle tree tests.
    data = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
    data.append("606162636465666768696a6b6c6d6e6f")
    roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    leaves = [bytes.fromhex(d) for d in data]
    for n, root in enumerate(roots):
        assert m.merkle_root(leaves[:n]).hex() == root, n


def test_merkle_root_changes_with_any_leaf_or_order() -> None:
    leaves = records(7)
    root = m.merkle_root(leaves)
    for i in range(7):
        changed = list(leaves)
        changed[i] = bytes([changed[i][0] ^ 1]) + changed[i][1:]
        assert m.merkle_root(changed) != root, i
    for i in range(6):
        swapped = list(leaves)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        assert m.merkle_root(swapped) != root, i
    assert m.merkle_root(leaves[:6]) != root
    assert m.merkle_root([*leaves, leaves[-1]]) != root  # no CVE-2012-2459 duplication


# --- build_manifest -------------------------------------------------------------------------


def test_build_manifest_shape() -> None:
    recs = records(4)
    man = make(record_sha256=recs)
    assert list(man) == [
        "manifest_version",
        "view",
        "suite",
        "upload",
        "storage",
        "encryption",
        "plaintext",
        "records",
        "retention",
        "signer",
    ]
    assert man["manifest_version"] == 2
    assert man["view"] == "reader"
    assert man["suite"] == 1
    assert man["upload"] == upload()
    assert man["storage"] == STORAGE
    assert man["encryption"] == ENCRYPTION
    assert man["plaintext"] == {
        "size": 200_000,
        "sha256": sha(b"plaintext").hex(),
        "sha256_hmac": sha(b"keyed").hex(),
    }
    assert man["records"] == {
        "count": 4,
        "sha256": [r.hex() for r in recs],
        "merkle_root": reference_mth(recs).hex(),
        "merkle": "rfc6962-sha256",
    }
    assert man["retention"] == {"policy": "default", "delete_after": "2036-03-01T00:00:00Z"}
    assert man["signer"] == {"kid": KID, "alg": "Ed25519"}
    assert make(retention=None)["retention"] is None
    assert make(upload=upload(client_checksum=None))["upload"]["client_checksum"] is None  # type: ignore[index]


def test_build_manifest_copies_its_inputs() -> None:
    up = upload()
    man = make(upload=up)
    up["uploader"]["principal"] = "mallory"  # type: ignore[index]
    assert man["upload"]["uploader"]["principal"] == "alice"  # type: ignore[index]


@pytest.mark.parametrize(
    "over",
    [
        {"upload": upload(metadata={"filename": "x.dcm"})},
        {"upload": upload(uploader={"principal": "a", "tenant": "t", "Metadata": "x"})},
        {"storage": {**STORAGE, "filename": "scan.dcm"}},
        {"encryption": {**ENCRYPTION, "extra": [{"filename": "x"}]}},
        {"retention": {"rules": {"metadata": {}}}},
    ],
)
def test_build_manifest_rejects_patient_data_keys(over: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="forbidden key"):
        make(**over)


@pytest.mark.parametrize(
    "over",
    [
        {"upload": {k: v for k, v in upload().items() if k != "completed"}},
        {"upload": upload(uploader={"principal": "a"})},
        {"storage": {k: v for k, v in STORAGE.items() if k != "part_count"}},
        {"encryption": {k: v for k, v in ENCRYPTION.items() if k != "dek_id"}},
        {"upload": upload(created="2026-03-01 10:00:00")},
        {"upload": upload(created="2026-03-01T10:00:00+01:00")},
        {"upload": upload(completed="2026-13-01T10:00:00Z")},
        {"upload": upload(client_checksum="sha1")},
        {"upload": upload(length=1)},
        {"plaintext_size": -1, "upload": upload(length=-1)},
        {"plaintext_sha256": b"short"},
        {"plaintext_sha256_hmac": b"short"},
        {"record_sha256": []},
        {"record_sha256": [*records(2), b"x" * 31]},
        {"signer_kid": ""},
        {"suite": 0},
        {"storage": {**STORAGE, "size": 1.5}},
        {"retention": "forever"},
    ],
)
def test_build_manifest_rejects_bad_input(over: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**over)


# --- sign / verify --------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    man = make()
    token = m.sign(man, SIGNER)
    h, p, s = token.split(".")
    assert json.loads(unb64u(h)) == {"alg": "Ed25519", "kid": KID, "typ": "imgw-manifest+jws"}
    assert unb64u(p) == m.canonical_json(man)
    assert len(unb64u(s)) == 64
    assert "=" not in token
    assert m.verify(token, KEYS) == man
    assert m.sign(man, SIGNER) == token  # Ed25519 is deterministic (RFC 8032)


def test_sign_refuses_a_kid_other_than_the_manifests() -> None:
    with pytest.raises(ValueError, match=r"signer\.kid"):
        m.sign(make(), Ed25519SigningKey("other", KEY))


def flip(text: str, index: int) -> str:
    """Flip one bit of the byte at `index` of a base64url part, and re-encode."""
    raw = bytearray(unb64u(text))
    raw[index] ^= 0x01
    return b64u(bytes(raw))


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("where", [0, 17, -1])
def test_tampering_with_any_part_fails(part: int, where: int) -> None:
    token = m.sign(make(), SIGNER)
    parts = token.split(".")
    parts[part] = flip(parts[part], where)
    with pytest.raises(ManifestError):
        m.verify(".".join(parts), KEYS)


def test_tampered_payload_names_bad_signature() -> None:
    h, p, s = m.sign(make(), SIGNER).split(".")
    payload = unb64u(p).replace(b'"alice"', b'"mallo"')
    with pytest.raises(ManifestError, match="bad signature"):
        m.verify(f"{h}.{b64u(payload)}.{s}", KEYS)


def test_equivalent_but_different_header_bytes_fail_the_signature() -> None:
    _, p, s = m.sign(make(), SIGNER).split(".")
    spaced = b64u(json.dumps(GOOD_HEADER, indent=1).encode())
    with pytest.raises(ManifestError, match="bad signature"):
        m.verify(f"{spaced}.{p}.{s}", KEYS)


def test_signature_by_another_key_fails() -> None:
    token = m.sign(make(), Ed25519SigningKey(KID, OTHER_KEY))
    with pytest.raises(ManifestError, match="bad signature"):
        m.verify(token, KEYS)


def test_unknown_kid() -> None:
    token = m.sign(make(), SIGNER)
    with pytest.raises(ManifestError, match="unknown kid 'gw-2026-01'"):
        m.verify(token, {"gw-2025-12": SIGNER.public()})


@pytest.mark.parametrize("alg", ["EdDSA", "none", "HS256", "ES256", "Ed448", "ed25519", None])
def test_other_algs_are_rejected(alg: object) -> None:
    payload = m.canonical_json(make())
    token = raw_jws({**GOOD_HEADER, "alg": alg}, payload)
    with pytest.raises(ManifestError, match="unsupported alg"):
        m.verify(token, KEYS)


def test_hs256_with_the_public_key_as_secret_is_rejected() -> None:
    # The classic confusion: an attacker MACs with the (public) verification key bytes.
    secret = PUB.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    h = b64u(json.dumps({**GOOD_HEADER, "alg": "HS256"}).encode())
    p = b64u(m.canonical_json(make()))
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    with pytest.raises(ManifestError, match="unsupported alg"):
        m.verify(f"{h}.{p}.{b64u(mac)}", KEYS)


def test_unsigned_alg_none_is_rejected() -> None:
    h = b64u(json.dumps({**GOOD_HEADER, "alg": "none"}).encode())
    with pytest.raises(ManifestError, match="unsupported alg"):
        m.verify(f"{h}.{b64u(m.canonical_json(make()))}.", KEYS)


@pytest.mark.parametrize(
    "header",
    [
        {**GOOD_HEADER, "typ": "JWT"},
        {"alg": "Ed25519", "kid": KID},
        {**GOOD_HEADER, "crit": ["exp"]},
        {**GOOD_HEADER, "jwk": {"kty": "OKP"}},
        {**GOOD_HEADER, "kid": 7},
        ["not", "an", "object"],
    ],
)
def test_header_must_be_exactly_alg_kid_typ(header: object) -> None:
    token = raw_jws(header, m.canonical_json(make()))
    with pytest.raises(ManifestError):
        m.verify(token, {**KEYS, "7": SIGNER.public()})


def test_duplicate_header_members_are_rejected() -> None:
    header = b'{"alg":"Ed25519","kid":"x","kid":"' + KID.encode() + b'","typ":"imgw-manifest+jws"}'
    token = raw_jws(header, m.canonical_json(make()))
    with pytest.raises(ManifestError, match="duplicate"):
        m.verify(token, {**KEYS, "x": SIGNER.public()})


def test_non_canonical_payload_is_rejected_despite_a_valid_signature() -> None:
    man = make()
    for payload in (
        json.dumps(man).encode(),  # whitespace after separators
        json.dumps(man, separators=(",", ":")).encode(),  # insertion order, not sorted
        json.dumps(man, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b" ",
        m.canonical_json(man).replace(b'"suite":1', b'"suite":1.0'),
        m.canonical_json(man).replace(b"alice", b"\\u0061lice"),
    ):
        with pytest.raises(ManifestError, match="not canonical"):
            m.verify(raw_jws(GOOD_HEADER, payload), KEYS)


def test_payload_with_duplicate_members_is_rejected() -> None:
    payload = m.canonical_json(make())[:-1] + b',"suite":2}'
    with pytest.raises(ManifestError, match="duplicate"):
        m.verify(raw_jws(GOOD_HEADER, payload), KEYS)


@pytest.mark.parametrize("payload", [b"[1,2]", b'"text"', b"NaN", b"\xff\xfe", b""])
def test_payload_must_be_a_json_object(payload: bytes) -> None:
    with pytest.raises(ManifestError):
        m.verify(raw_jws(GOOD_HEADER, payload), KEYS)


def test_signer_in_payload_must_match_the_header() -> None:
    man = make()
    man["signer"] = {"kid": "someone-else", "alg": "Ed25519"}
    with pytest.raises(ManifestError, match="signer"):
        m.verify(raw_jws(GOOD_HEADER, m.canonical_json(man)), KEYS)
    for version in (3, 0, True, "2"):
        man = make()
        man["manifest_version"] = version
        with pytest.raises(ManifestError, match="manifest_version"):
            m.verify(raw_jws(GOOD_HEADER, m.canonical_json(man)), KEYS)


def test_version_1_manifests_still_verify() -> None:
    """Signed before the stored view existed: plaintext.sha256 in the stored copy."""
    man = make()
    man["manifest_version"] = 1
    plaintext = man["plaintext"]
    assert isinstance(plaintext, dict)
    del man["view"], plaintext["sha256_hmac"]
    assert m.verify(m.sign(man, SIGNER), KEYS) == man


# --- the two views ----------------------------------------------------------------------------


def test_stored_view_leaves_out_what_discloses_the_plaintext() -> None:
    reader = make()
    stored = m.stored_view(reader)
    assert stored["view"] == "stored"
    assert stored["plaintext"] == {"size": 200_000, "sha256_hmac": sha(b"keyed").hex()}
    assert "client_checksum" not in stored["upload"]  # type: ignore[operator]
    text = m.canonical_json(stored)
    for secret in (sha(b"plaintext").hex().encode(), b"Kq5sNclPz7QV2"):
        assert secret not in text
    # Everything else is the reader's manifest, and the reader's is untouched.
    assert {k: v for k, v in stored.items() if k not in ("view", "plaintext", "upload")} == {
        k: v for k, v in reader.items() if k not in ("view", "plaintext", "upload")
    }
    assert reader["view"] == "reader" and "sha256" in reader["plaintext"]  # type: ignore[operator]
    assert m.verify(m.sign(stored, SIGNER), KEYS) == stored
    m.check_views(reader, stored)


def test_check_views_refuses_views_of_different_manifests() -> None:
    reader = make()
    other = m.stored_view(make(plaintext_sha256_hmac=sha(b"other")))
    with pytest.raises(ManifestError, match="differ"):
        m.check_views(reader, other)
    with pytest.raises(ManifestError):
        m.check_views(m.stored_view(reader), m.stored_view(reader))
    with pytest.raises(ValueError):
        m.stored_view(m.stored_view(reader))


def test_concat_manifest_pins_parts_without_plaintext_digests() -> None:
    parts = [
        {"id": "p1", "length": 5, "manifest_jws_sha256": "aa" * 32},
        {"id": "p2", "length": 7, "manifest_jws_sha256": "bb" * 32},
    ]
    up = {k: v for k, v in upload(length=12).items() if k != "client_checksum"}
    man = m.build_concat_manifest(upload=up, parts=parts, plaintext_size=12, signer_kid=KID)
    assert man["kind"] == "concatenation" and man["manifest_version"] == 2
    assert man["plaintext"] == {"size": 12}
    assert man["parts"] == parts
    with pytest.raises(ValueError, match="plaintext SHA-256"):
        m.build_concat_manifest(
            upload=up,
            parts=[{**parts[0], "plaintext_sha256": "cc" * 32}, parts[1]],
            plaintext_size=12,
            signer_kid=KID,
        )
    with pytest.raises(ValueError, match="add up"):
        m.build_concat_manifest(upload=up, parts=parts[:1], plaintext_size=12, signer_kid=KID)


def test_payload_of_a_jws() -> None:
    man = make()
    assert m.payload(m.sign(man, SIGNER)) == m.canonical_json(man)
    with pytest.raises(ManifestError):
        m.payload("a.b")


def test_malformed_compact_serializations() -> None:
    token = m.sign(make(), SIGNER)
    h, p, s = token.split(".")
    # The last base64url character of a 64-byte signature carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sloppy = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
    assert unb64u(sloppy) == unb64u(s) and sloppy != s
    bad = [
        f"{h}.{p}",
        f"{token}.",
        f"{h}.{p}.{s}=",
        f"{h}=.{p}.{s}",
        f"{h}.{p}.{s[:-2]}",
        f"{h}.{p}.{s}A",
        f"{h}.{p}.{s[:10]}+{s[11:]}",
        f"{h}.{p}.{sloppy}",
        f" {token}",
        f"{token}\n",
        "",
        "..",
    ]
    for candidate in bad:
        with pytest.raises(ManifestError):
            m.verify(candidate, KEYS)


# --- verify_records -------------------------------------------------------------------------


def test_verify_records() -> None:
    recs = records(5)
    man = make(record_sha256=recs)
    m.verify_records(man, recs)
    changed = list(recs)
    changed[3] = sha(b"other")
    with pytest.raises(ManifestError, match="record 3 differs"):
        m.verify_records(man, changed)
    with pytest.raises(ManifestError, match="record 4 differs"):
        m.verify_records(man, recs[:4])
    with pytest.raises(ManifestError, match="record 5 differs"):
        m.verify_records(man, [*recs, sha(b"extra")])
    with pytest.raises(ManifestError, match="record 0 differs"):
        m.verify_records(man, [recs[1], recs[0], *recs[2:]])


def test_verify_records_checks_the_root_too() -> None:
    recs = records(3)
    man = make(record_sha256=recs)
    bad = copy.deepcopy(man)
    bad["records"]["merkle_root"] = "00" * 32  # type: ignore[index]
    with pytest.raises(ManifestError, match="merkle_root differs"):
        m.verify_records(bad, recs)
    bad = copy.deepcopy(man)
    bad["records"]["count"] = 4  # type: ignore[index]
    with pytest.raises(ManifestError, match="count"):
        m.verify_records(bad, recs)


# --- independent verification with joserfc ----------------------------------------------------


def test_joserfc_verifies_our_jws_with_our_jwks() -> None:
    man = make()
    token = m.sign(man, SIGNER)
    key_set = KeySet.import_key_set(jws.jwks([SIGNER.public()]))  # type: ignore[arg-type]
    # joserfc does not enable Ed25519 by default ("not recommended" in its registry),
    # so it has to be named, exactly as a careful verifier would.
    obj = jose_jws.deserialize_compact(token, key_set, algorithms=["Ed25519"])
    assert obj.payload == m.canonical_json(man)
    assert obj.protected == {"alg": "Ed25519", "kid": KID, "typ": m.JWS_TYP}
    assert json.loads(obj.payload) == man


def test_joserfc_rejects_what_we_reject() -> None:
    token = m.sign(make(), SIGNER)
    h, p, s = token.split(".")
    key_set = KeySet.import_key_set(jws.jwks([SIGNER.public()]))  # type: ignore[arg-type]
    with pytest.raises(JoseError):
        jose_jws.deserialize_compact(f"{h}.{flip(p, 5)}.{s}", key_set, algorithms=["Ed25519"])
    other = KeySet.import_key_set(jws.jwks([Ed25519SigningKey(KID, OTHER_KEY).public()]))  # type: ignore[arg-type]
    with pytest.raises(JoseError):
        jose_jws.deserialize_compact(token, other, algorithms=["Ed25519"])


def test_we_verify_a_jws_made_by_joserfc() -> None:
    man = make()
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = OKPKey.import_key(pem)
    token = jose_jws.serialize_compact(
        {"alg": "Ed25519", "kid": KID, "typ": m.JWS_TYP},
        m.canonical_json(man),
        key,
        algorithms=["Ed25519"],
    )
    assert m.verify(token, KEYS) == man
