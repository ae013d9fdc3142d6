"""Suite 2 (SM4-GCM, HKDF-SM3, SM3) of the sealed format against its independent vectors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from gateway import sealed
from gateway.sealed import (
    SUITE_AES256GCM,
    SUITE_SM4GCM,
    Header,
    InvalidSealedData,
    Sealer,
    header_length,
    new_header,
    open_object,
)
from gateway.suites import SM, SM4GCM

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sealed_v2.json").read_text())
DEK = bytes.fromhex(VECTORS["dek"])
SEG = VECTORS["segment_size"]


def data(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def sm3(data: bytes) -> str:
    return SM.hash(data).hexdigest()


def nonces(hexes: list[str]) -> Callable[[], bytes]:
    it: Iterator[bytes] = iter(bytes.fromhex(h) for h in hexes)
    return lambda: next(it)


def vector_header(case: dict[str, Any]) -> Header:
    return new_header(
        DEK,
        upload_id=case["upload_id"],
        dek_id=bytes.fromhex(VECTORS["dek_id"]),
        segment_size=SEG,
        plaintext_size=None if case["length_deferred"] else case["plaintext_len"],
        salt=bytes.fromhex(VECTORS["salt"]),
        suite=SUITE_SM4GCM,
    )


def seal(plaintext: bytes, dek: bytes = DEK, upload_id: str = "sm-1") -> bytes:
    header = new_header(
        dek,
        upload_id=upload_id,
        dek_id=bytes(16),
        segment_size=SEG,
        plaintext_size=len(plaintext),
        suite=SUITE_SM4GCM,
    )
    sealer = Sealer(dek, header)
    chunks = [plaintext[i : i + SEG] for i in range(0, len(plaintext), SEG)] or [b""]
    out = bytearray(header.encode())
    for i, chunk in enumerate(chunks):
        out += sealer.seal_record(i, i == len(chunks) - 1, chunk)
    return bytes(out)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors(case: dict[str, Any]) -> None:
    header = vector_header(case)
    assert header.encode().hex() == case["header"]
    assert header.digest.hex() == case["header_digest"]
    assert header.commitment.hex() == case["commitment"]
    assert sealed.derive_content_key(DEK, header).hex() == case["content_key"]
    assert sealed.derive_value_key(DEK, header).hex() == case["value_key"]
    sealer = Sealer(DEK, header, nonce=nonces(case["nonces"]))
    plaintext = data(case["plaintext_len"])
    obj = bytearray(header.encode())
    for rec in case["records"]:
        i = rec["index"]
        sealed_rec = sealer.seal_record(i, rec["final"], plaintext[i * SEG : (i + 1) * SEG])
        assert sm3(sealed_rec) == rec["sm3"]
        if "hex" in rec:
            assert sealed_rec.hex() == rec["hex"]
        obj += sealed_rec
    assert len(obj) == case["object_size"]
    assert sm3(bytes(obj)) == case["object_sm3"]
    if "object" in case:
        assert obj.hex() == case["object"]
    assert open_object(DEK, bytes(obj)) == plaintext
    assert sm3(plaintext) == case["plaintext_sm3"]
    keyed = case["keyed_digest"]
    digest = sealer.keyed_digest(keyed["name"], bytes.fromhex(case["plaintext_sm3"]))
    assert digest.hex() == keyed["hmac_sm3"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_a_record_sealed_as_it_arrives_matches_the_vector(case: dict[str, Any]) -> None:
    sealer = Sealer(DEK, vector_header(case), nonce=nonces(case["nonces"]))
    plaintext = data(case["plaintext_len"])
    for rec in case["records"]:
        i, length = rec["index"], rec["plaintext_len"]
        stream = sealer.record_stream(i, rec["final"], length)
        out = bytearray(length + sealed.TAG_LEN)
        cipher = bytes(stream.update(plaintext[i * SEG : i * SEG + length], out))
        whole = stream.nonce + cipher + stream.finish()
        assert sm3(whole) == rec["sm3"]
        assert stream.recover(cipher) == plaintext[i * SEG : i * SEG + length]


def test_tail_vector() -> None:
    tail = VECTORS["tail"]
    (case,) = [c for c in VECTORS["cases"] if c["name"] == tail["case"]]
    nonce = bytes.fromhex(tail["nonce"])
    sealer = Sealer(DEK, vector_header(case), nonce=lambda: nonce)
    start, length = tail["start"], tail["length"]
    plaintext = data(start + length)[start:]
    piece = sealer.seal_tail(tail["segment"], tail["piece"], start, plaintext)
    assert piece.hex() == tail["piece_hex"]
    assert sealer.open_tail(tail["segment"], tail["piece"], start, piece) == plaintext
    into = bytearray(len(piece))
    sealer.seal_tail_into(tail["segment"], tail["piece"], start, plaintext, into)
    assert into == piece  # the same nonce: the same bytes
    out = bytearray(length)
    sealer.open_tail_into(tail["segment"], tail["piece"], start, piece, out)
    assert out == plaintext
    with pytest.raises(InvalidSealedData):
        sealer.open_tail_into(tail["segment"], tail["piece"] + 1, start, piece, out)


@pytest.mark.parametrize("n", [0, 1, SEG, 2 * SEG + 5])
def test_round_trip_and_values(n: int) -> None:
    obj = seal(data(n))
    assert open_object(DEK, obj) == data(n)
    header = Header.decode(obj[: header_length(obj)])
    assert header.suite == SUITE_SM4GCM
    sealer = Sealer(DEK, header)
    value = sealer.seal_value("metadata", b"filename aGVsbG8=")
    assert sealer.open_value("metadata", value) == b"filename aGVsbG8="
    with pytest.raises(InvalidSealedData):
        sealer.open_value("digest", value)


def test_tampering_and_wrong_keys_fail() -> None:
    obj = bytearray(seal(data(SEG + 10)))
    with pytest.raises(InvalidSealedData, match="commitment"):
        open_object(bytes(16), bytes(obj))
    with pytest.raises(InvalidSealedData, match="commitment"):
        open_object(bytes(range(32)), bytes(obj))  # a suite-1 sized key
    obj[-1] ^= 1
    with pytest.raises(InvalidSealedData):
        open_object(DEK, bytes(obj))


def test_a_suite_is_bound_into_the_header() -> None:
    """The suite byte is covered by the commitment: relabelling an object fails."""
    obj = bytearray(seal(data(10), dek=bytes(range(32))[:16]))
    obj[9] = SUITE_AES256GCM
    with pytest.raises(InvalidSealedData):
        open_object(bytes(range(32)), bytes(obj))


def test_sm4gcm_rejects_a_bad_tag_and_a_bad_key() -> None:
    aead = SM4GCM(bytes(16))
    sealed_bytes = aead.encrypt(bytes(12), b"abc", b"aad")
    assert aead.decrypt(bytes(12), sealed_bytes, b"aad") == b"abc"
    with pytest.raises(InvalidTag):
        aead.decrypt(bytes(12), sealed_bytes, b"other")
    with pytest.raises(ValueError):
        SM4GCM(bytes(32))


def test_the_vectors_are_the_independent_implementations() -> None:
    """sealed_v2.json is what make_sealed_v2_vectors.py (gmssl, no OpenSSL) writes; its
    primitives pass their published examples (the small cases only, to stay quick)."""
    from tests.vectors import make_sealed_v2_vectors as independent

    independent.self_check()
    for spec in independent.CASES[:2]:
        (case,) = [c for c in VECTORS["cases"] if c["name"] == spec[0]]
        assert independent.build_case(*spec) == case
