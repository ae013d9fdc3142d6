"""Tests for gateway.sealed: round trips, every tampering we can think of, vectors."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import sealed, suites
from gateway.sealed import (
    RECORD_OVERHEAD,
    TAG_LEN,
    Header,
    InvalidSealedData,
    SealedFormatError,
    Sealer,
    header_length,
    iter_records,
    new_header,
    open_object,
    record_offset,
    record_size,
)

S = sealed.MIN_SEGMENT_SIZE
DEK = bytes(range(32))
DEK_ID = b"\x01" * 16
VECTORS = json.loads((Path(__file__).parent / "vectors" / "sealed_v1.json").read_text())


def data(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def seal_object(
    plaintext: bytes,
    *,
    dek: bytes = DEK,
    upload_id: str = "up-1",
    deferred: bool = False,
    salt: bytes | None = None,
    empty_final: bool = False,
) -> bytes:
    """Seal `plaintext` the way a writer does; `empty_final` closes with an empty record."""
    header = new_header(
        dek,
        upload_id=upload_id,
        dek_id=DEK_ID,
        segment_size=S,
        plaintext_size=None if deferred else len(plaintext),
        salt=salt,
    )
    sealer = Sealer(dek, header)
    chunks = [plaintext[i : i + S] for i in range(0, len(plaintext), S)]
    if empty_final or not chunks:
        chunks.append(b"")
    out = bytearray(header.encode())
    for i, chunk in enumerate(chunks):
        out += sealer.seal_record(i, i == len(chunks) - 1, chunk)
    return bytes(out)


def records_of(obj: bytes) -> tuple[bytes, list[bytes]]:
    hlen = header_length(obj)
    header = Header.decode(obj[:hlen])
    recs = [
        obj[off : off + size]
        for _, off, size, _ in iter_records(hlen, header.segment_size, len(obj))
    ]
    return obj[:hlen], recs


def flip(buf: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(buf)
    out[pos] ^= 1 << bit
    return bytes(out)


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, S - 1, S, S + 1, 3 * S - 1, 3 * S])
@pytest.mark.parametrize("deferred", [False, True])
def test_round_trip(n: int, deferred: bool) -> None:
    obj = seal_object(data(n), deferred=deferred)
    assert open_object(DEK, obj) == data(n)
    header = Header.decode(obj[: header_length(obj)])
    assert header.length_deferred is deferred
    assert header.plaintext_size == (0 if deferred else n)


def test_empty_upload_is_one_empty_final_record() -> None:
    obj = seal_object(b"")
    hlen = header_length(obj)
    assert len(obj) == hlen + RECORD_OVERHEAD
    assert list(iter_records(hlen, S, len(obj))) == [(0, hlen, RECORD_OVERHEAD, True)]
    assert open_object(DEK, obj) == b""


@pytest.mark.parametrize("deferred", [False, True])
def test_boundary_upload_closed_by_empty_final_record(deferred: bool) -> None:
    obj = seal_object(data(2 * S), deferred=deferred, empty_final=True)
    hlen = header_length(obj)
    layout = list(iter_records(hlen, S, len(obj)))
    assert [(i, size, final) for i, _, size, final in layout] == [
        (0, S + 28, False),
        (1, S + 28, False),
        (2, 28, True),
    ]
    assert open_object(DEK, obj) == data(2 * S)


def test_header_round_trip_and_length() -> None:
    header = new_header(
        DEK, upload_id="A-z_09", dek_id=DEK_ID, segment_size=S, plaintext_size=12345
    )
    enc = header.encode()
    assert len(enc) == 24 + 6 + 32 + 16 + 32
    assert header_length(enc[: sealed.HEADER_PREFIX_LEN]) == len(enc)
    assert Header.decode(enc) == header
    assert header.digest == hashlib.sha256(enc).digest()
    assert len(header.salt) == 32
    other = new_header(DEK, upload_id="A-z_09", dek_id=DEK_ID, segment_size=S, plaintext_size=1)
    assert other.salt != header.salt  # fresh random salt per header


def test_record_geometry() -> None:
    assert record_size(0) == 28
    assert record_size(S) == S + 28
    assert record_offset(100, S, 0) == 100
    assert record_offset(100, S, 3) == 100 + 3 * (S + 28)
    obj = seal_object(data(3 * S - 1))
    hlen = header_length(obj)
    for index, offset, size, _ in iter_records(hlen, S, len(obj)):
        assert offset == record_offset(hlen, S, index)
        assert size == (S + 28 if index < 2 else S - 1 + 28)


@pytest.mark.parametrize("leftover", [1, 27])
def test_iter_records_rejects_partial_record(leftover: int) -> None:
    with pytest.raises(SealedFormatError):
        list(iter_records(110, S, 110 + S + 28 + leftover))


@pytest.mark.parametrize("body", [0, 27])
def test_iter_records_rejects_object_without_record(body: int) -> None:
    with pytest.raises(SealedFormatError):
        list(iter_records(110, S, 110 + body))


# --- sealing API -------------------------------------------------------------


def test_seal_record_into_matches_open_record() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    plaintext = bytearray(data(S))
    buf = bytearray(10 + record_size(S) + 10)
    window = memoryview(buf)[10 : 10 + record_size(S)]
    sealer.seal_record_into(7, False, memoryview(plaintext), window)
    assert buf[:10] == bytes(10) and buf[-10:] == bytes(10)  # nothing outside the window
    assert sealer.open_record(7, False, window) == plaintext
    assert sealer.open_record(7, False, bytes(window)) == plaintext


def test_a_record_opened_into_a_buffer() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    plaintext = data(1000)
    sealed_record = sealer.seal_record(4, True, plaintext)
    room = bytearray(b"\xaa" * 1100)  # a pooled buffer, dirty and larger than the record
    with memoryview(room)[:1000] as out:
        sealer.open_record_into(4, True, sealed_record, out)
    assert room[:1000] == plaintext and room[1000:] == b"\xaa" * 100
    with pytest.raises(ValueError):
        sealer.open_record_into(4, True, sealed_record, room)  # not the plaintext's size
    with pytest.raises(InvalidSealedData):  # the AAD binds the index
        sealer.open_record_into(5, True, sealed_record, memoryview(room)[:1000])
    tampered = bytearray(sealed_record)
    tampered[40] ^= 1
    with pytest.raises(InvalidSealedData):
        sealer.open_record_into(4, True, tampered, memoryview(room)[:1000])
    with pytest.raises(SealedFormatError):  # a non-final record is a full segment
        sealer.open_record_into(4, False, sealed_record, memoryview(room)[:1000])


def sealer_of(suite_id: int) -> Sealer:
    """A sealer of a fresh upload of suite `suite_id`, under a new key."""
    dek = suites.new_dek(suite_id)
    header = new_header(
        dek, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None, suite=suite_id
    )
    return Sealer(dek, header)


@pytest.mark.parametrize("suite_id", [1, 2])
def test_a_record_opened_where_it_lies(suite_id: int) -> None:
    sealer = sealer_of(suite_id)
    plaintext = data(S)
    sealed_record = sealer.seal_record(4, False, plaintext)
    room = bytearray(sealed_record) + b"\xaa" * 9  # a pooled buffer, larger than the record
    with memoryview(room)[: len(sealed_record)] as record:
        assert sealer.open_record_in_place(4, False, record) == plaintext
    assert room[:12] == sealed_record[:12] and room[-9:] == b"\xaa" * 9  # the rest untouched
    assert room[12 : 12 + S] == plaintext
    for index, final, change in [(5, False, None), (4, False, 40), (4, True, None)]:
        damaged = bytearray(sealed_record)
        if change is not None:
            damaged[change] ^= 1
        with pytest.raises(InvalidSealedData):  # the AAD binds index and flag; the tag
            sealer.open_record_in_place(index, final, damaged)
    with pytest.raises(SealedFormatError):  # a non-final record is a full segment
        sealer.open_record_in_place(4, False, bytearray(sealed_record[:-1]))


@pytest.mark.parametrize(("length", "final"), [(S, False), (S, True), (1000, True), (0, True)])
def test_a_record_sealed_as_it_arrives_is_a_record(length: int, final: bool) -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    plaintext = data(length)
    stream = sealer.record_stream(3, final, length)
    out = bytearray(stream.nonce)
    scratch = bytearray(4099 + TAG_LEN)
    for at in range(0, length, 4099):  # odd slices, as the bytes arrive
        out += stream.update(plaintext[at : at + 4099], scratch)
    out += stream.finish()
    assert len(out) == record_size(length)
    assert sealer.open_record(3, final, out) == plaintext
    with pytest.raises(InvalidSealedData):  # the AAD binds index, final flag and length
        sealer.open_record(4, final, out)
    # The keystream gives back the plaintext of any prefix of the ciphertext.
    cut = out[12 : 12 + length * 2 // 3]
    assert stream.recover(bytes(cut)) == plaintext[: len(cut)]
    room = bytearray(b"\xaa" * (len(cut) + 100))  # a pooled buffer: dirty, larger
    assert stream.recover_into(cut, room) == plaintext[: len(cut)]
    assert room[len(cut) :] == b"\xaa" * 100  # nothing written past the plaintext
    with pytest.raises(ValueError):
        stream.recover_into(cut, bytearray(len(cut) - 1))  # no room
    # Or of any range of it: the keystream from the counter block holding its start.
    for at in (a for a in (1, 15, 16, 17, 4099, len(cut) - 5) if 0 <= a < len(cut)):
        tail = stream.recover_into(cut[at:], bytearray(len(cut)), at=at)
        assert tail == plaintext[at : len(cut)]
        assert stream.recover_into(cut[at : at + 3], bytearray(3), at=at) == plaintext[at : at + 3]
    with pytest.raises(ValueError):
        stream.recover_into(out[12:22], bytearray(10), at=stream.done - 5)  # past its end
    with pytest.raises(ValueError):
        stream.recover_into(cut[:10], bytearray(10), at=-1)


def test_a_record_stream_is_the_record_sealed_whole() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    nonce = bytes(range(12))
    sealer = Sealer(DEK, header, nonce=lambda: nonce)
    plaintext = data(S)
    stream = sealer.record_stream(2, False, S)
    out = bytearray(record_size(S))
    out[:12] = stream.nonce
    for at in range(0, S, 1000):
        piece = plaintext[at : at + 1000]
        stream.update(piece, memoryview(out)[12 + at : 12 + at + len(piece) + TAG_LEN])
    out[-TAG_LEN:] = stream.finish()
    whole = bytearray(record_size(S))
    sealer.seal_record_into(2, False, plaintext, whole)
    assert out == whole


def test_a_record_stream_takes_no_more_than_its_length() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    stream = Sealer(DEK, header).record_stream(0, True, 5)
    out = bytearray(64)
    with pytest.raises(ValueError):
        stream.finish()  # not all of its bytes yet
    stream.update(b"abc", out)
    with pytest.raises(ValueError):
        stream.update(b"def", out)
    with pytest.raises(ValueError):
        stream.recover(bytes(4))  # only what it sealed
    stream.update(b"de", out)
    assert len(stream.finish()) == TAG_LEN


def test_a_record_sealed_as_it_arrives_checks_its_length() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    with pytest.raises(ValueError):
        sealer.record_stream(0, False, S - 1)  # non-final records are whole segments
    with pytest.raises(ValueError):
        sealer.record_stream(0, True, S + 1)
    nonces = {sealer.record_stream(0, True, 5).nonce for _ in range(1000)}
    assert len(nonces) == 1000


def test_seal_record_into_checks_sizes() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    with pytest.raises(ValueError):
        sealer.seal_record_into(0, True, b"abc", bytearray(30))
    with pytest.raises(ValueError):  # non-final records are exactly one segment
        sealer.seal_record(0, False, b"abc")
    with pytest.raises(ValueError):
        sealer.seal_record(0, True, bytes(S + 1))
    with pytest.raises(ValueError):
        sealer.seal_record(-1, True, b"abc")


def test_nonces_are_fresh() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    a = sealer.seal_record(0, True, b"same bytes")
    b = sealer.seal_record(0, True, b"same bytes")
    assert a != b
    nonces = {sealer.seal_record(0, True, b"x")[:12] for _ in range(1000)}
    nonces |= {sealer.seal_tail(0, 0, 0, b"x")[:12] for _ in range(1000)}
    assert len(nonces) == 2000


def test_bad_nonce_source_is_refused() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header, nonce=lambda: b"short")
    with pytest.raises(ValueError):
        sealer.seal_record(0, True, b"x")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upload_id": ""},
        {"upload_id": "a" * 65},
        {"upload_id": "has space"},
        {"upload_id": "dot.dot"},
        {"upload_id": "slash/"},
        {"upload_id": "é"},
        {"upload_id": "trailing\n"},
        {"segment_size": S - 1},
        {"segment_size": sealed.MAX_SEGMENT_SIZE + 1},
        {"plaintext_size": -1},
        {"plaintext_size": 1 << 64},
        {"dek_id": b"short"},
        {"salt": b"short"},
    ],
)
def test_new_header_rejects_bad_fields(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "upload_id": "u",
        "dek_id": DEK_ID,
        "segment_size": S,
        "plaintext_size": 10,
    }
    with pytest.raises(ValueError):
        new_header(DEK, **{**args, **kwargs})


def test_upload_id_limits_accepted() -> None:
    uid = "a" * 64
    header = new_header(DEK, upload_id=uid, dek_id=DEK_ID, segment_size=S, plaintext_size=0)
    assert Header.decode(header.encode()).upload_id == uid


def test_tail_round_trip() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    piece = sealer.seal_tail(3, 1, 100, b"tail bytes")
    assert len(piece) == len(b"tail bytes") + 28
    assert sealer.open_tail(3, 1, 100, piece) == b"tail bytes"
    assert Sealer(DEK, header).open_tail(3, 1, 100, memoryview(piece)) == b"tail bytes"
    with pytest.raises(ValueError):
        sealer.seal_tail(0, 0, S - 2, b"abc")  # runs past the segment


def test_a_tail_piece_sealed_and_opened_in_buffers() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    room = bytearray(b"\xaa" * 64)
    with memoryview(room)[: 10 + 28] as out:
        sealer.seal_tail_into(3, 1, 100, b"tail bytes", out)
    assert room[38:] == b"\xaa" * 26  # nothing past the piece
    assert sealer.open_tail(3, 1, 100, room[:38]) == b"tail bytes"
    plain = bytearray(10)
    sealer.open_tail_into(3, 1, 100, room[:38], plain)
    assert plain == b"tail bytes"
    with pytest.raises(ValueError):
        sealer.seal_tail_into(3, 1, 100, b"tail bytes", room)  # not the piece's size
    with pytest.raises(ValueError):
        sealer.open_tail_into(3, 1, 100, room[:38], bytearray(11))
    with pytest.raises(InvalidSealedData):
        sealer.open_tail_into(3, 2, 100, room[:38], plain)  # another piece's number


@pytest.mark.parametrize("suite_id", [1, 2])
def test_a_tail_piece_sealed_where_its_plaintext_lies(suite_id: int) -> None:
    sealer = sealer_of(suite_id)
    plain = os.urandom(S - 100)
    room = bytearray(b"\xaa" * (len(plain) + 28 + 7))
    room[12 : 12 + len(plain)] = plain
    with memoryview(room)[: len(plain) + 28] as sealed:
        sealer.seal_tail_in_place(3, 1, 100, sealed)
    assert room[len(plain) + 28 :] == b"\xaa" * 7  # nothing past the piece
    assert plain not in room  # sealed where it lay: no plaintext left
    assert sealer.open_tail(3, 1, 100, room[: len(plain) + 28]) == plain
    with pytest.raises(ValueError):
        sealer.seal_tail_in_place(3, 1, 100, bytearray(27))  # no room for nonce and tag
    with pytest.raises(ValueError):
        sealer.seal_tail_in_place(0, 0, S - 2, bytearray(3 + 28))  # runs past the segment


def test_value_round_trip_and_bindings() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    sealed_value = sealer.seal_value("metadata", b"filename ZG9l")
    assert b"ZG9l" not in sealed_value
    assert len(sealed_value) == len(b"filename ZG9l") + RECORD_OVERHEAD
    assert Sealer(DEK, header).open_value("metadata", sealed_value) == b"filename ZG9l"
    assert sealer.seal_value("metadata", b"x") != sealer.seal_value("metadata", b"x")
    with pytest.raises(InvalidSealedData):
        sealer.open_value("digest", sealed_value)  # another name
    with pytest.raises(InvalidSealedData):
        sealer.open_value("metadata", flip(sealed_value, 20))
    other = new_header(DEK, upload_id="v", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    with pytest.raises(InvalidSealedData):
        Sealer(DEK, other).open_value("metadata", sealed_value)  # another object
    with pytest.raises(SealedFormatError):
        sealer.open_value("metadata", sealed_value[:27])
    with pytest.raises(ValueError):
        sealer.seal_value("Bad Name", b"x")


def test_keyed_digest_from_the_spec_alone() -> None:
    """HMAC-SHA-256 under HKDF(DEK, salt, label "/digest" || suite || id), over
    label "/digest" || header digest || u8(len(name)) || name || data (FORMAT.md)."""
    import hmac

    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=5)
    info = b"imgw-seal/v1/digest" + bytes([1]) + b"u"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=info).derive(DEK)
    name = b"plaintext.sha256"
    message = b"imgw-seal/v1/digest" + header.digest + bytes([len(name)]) + name + b"data"
    want = hmac.new(key, message, hashlib.sha256).digest()
    sealer = Sealer(DEK, header)
    assert sealer.keyed_digest("plaintext.sha256", b"data") == want
    assert sealer.keyed_digest("plaintext.sha256", memoryview(b"data")) == want
    assert sealer.keyed_digest("other", b"data") != want
    other = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=5)
    assert Sealer(DEK, other).keyed_digest("plaintext.sha256", b"data") != want  # new salt
    with pytest.raises(ValueError):
        sealer.keyed_digest("Bad Name", b"x")


def test_a_value_is_never_a_record_or_a_tail_piece() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    value = sealer.seal_value("metadata", b"abc")
    with pytest.raises(InvalidSealedData):
        sealer.open_record(0, True, value)
    with pytest.raises(InvalidSealedData):
        sealer.open_tail(0, 0, 0, value)
    with pytest.raises(InvalidSealedData):
        sealer.open_value("metadata", sealer.seal_record(0, True, b"abc"))


# --- attacks -----------------------------------------------------------------


# Positions as (counted from the header's end?, offset); the object is HEADER || REC_0 || REC_1.
BIT_TARGETS = {
    "magic": (False, 0),
    "suite": (False, 9),
    "flags": (False, 10),
    "segment_size": (False, 14),
    "plaintext_size": (False, 22),
    "upload_id": (False, 24),
    "salt": (True, -80),
    "dek_id": (True, -48),
    "commitment": (True, -1),
    "rec0 nonce": (True, 3),
    "rec0 ciphertext": (True, 12 + 500),
    "rec0 tag": (True, S + 28 - 1),
    "rec1 nonce": (True, S + 28),
    "rec1 ciphertext": (True, S + 28 + 12),
    "rec1 tag": (True, S + 28 + 12 + 100),
}


@pytest.mark.parametrize("target", BIT_TARGETS)
@pytest.mark.parametrize("bit", [0, 7])
def test_bit_flip_rejected(target: str, bit: int) -> None:
    obj = seal_object(data(S + 100))
    from_header_end, offset = BIT_TARGETS[target]
    pos = header_length(obj) + offset if from_header_end else offset
    with pytest.raises(InvalidSealedData):
        open_object(DEK, flip(obj, pos, bit))


def test_swapped_records_rejected() -> None:
    obj = seal_object(data(3 * S))
    hdr, recs = records_of(obj)
    with pytest.raises(InvalidSealedData):
        open_object(DEK, hdr + recs[1] + recs[0] + recs[2])


def test_dropped_final_record_rejected() -> None:
    obj = seal_object(data(2 * S + 10))
    hdr, recs = records_of(obj)
    # Ends on a record boundary with a non-final record; the reader treats it as final.
    truncated = hdr + recs[0] + recs[1]
    with pytest.raises(InvalidSealedData):
        open_object(DEK, truncated)


@pytest.mark.parametrize("deferred", [False, True])
def test_dropped_empty_final_record_rejected(deferred: bool) -> None:
    obj = seal_object(data(2 * S), deferred=deferred, empty_final=True)
    with pytest.raises(InvalidSealedData):
        open_object(DEK, obj[:-RECORD_OVERHEAD])


@pytest.mark.parametrize("cut", [1, 27, 28, 29, 500, S + 27])
def test_truncated_object_rejected(cut: int) -> None:
    obj = seal_object(data(2 * S + 600))
    with pytest.raises(InvalidSealedData):
        open_object(DEK, obj[:-cut])


def test_header_only_object_rejected() -> None:
    obj = seal_object(b"")
    with pytest.raises(InvalidSealedData):
        open_object(DEK, obj[: header_length(obj)])
    for n in (0, 5, 23, header_length(obj) - 1):
        with pytest.raises(InvalidSealedData):
            open_object(DEK, obj[:n])


def test_extra_record_appended_rejected() -> None:
    obj = seal_object(data(S + 5), deferred=True)
    _, recs = records_of(obj)
    with pytest.raises(InvalidSealedData):
        open_object(DEK, obj + recs[-1])


@pytest.mark.parametrize(
    "other", [{"upload_id": "up-2"}, {"salt": os.urandom(32)}], ids=["upload_id", "salt"]
)
def test_spliced_record_from_other_upload_rejected(other: dict[str, Any]) -> None:
    salt = os.urandom(32)
    a = seal_object(data(3 * S), salt=salt)
    b = seal_object(data(3 * S), **{"salt": salt, **other})
    hdr_a, recs_a = records_of(a)
    _, recs_b = records_of(b)
    assert open_object(DEK, b) == open_object(DEK, a)  # same DEK, same plaintext
    with pytest.raises(InvalidSealedData):
        open_object(DEK, hdr_a + recs_a[0] + recs_b[1] + recs_a[2])


def test_header_swapped_onto_other_records_rejected() -> None:
    a = seal_object(data(S + 1), upload_id="up-a")
    b = seal_object(data(S + 1), upload_id="up-b")
    hdr_a, _ = records_of(a)
    _, recs_b = records_of(b)
    with pytest.raises(InvalidSealedData):
        open_object(DEK, hdr_a + b"".join(recs_b))


def test_wrong_dek_fails_at_commitment_before_decrypting(monkeypatch: pytest.MonkeyPatch) -> None:
    obj = seal_object(data(S + 1))
    wrong = bytes(32)

    class NoAead:
        def __init__(self, key: bytes) -> None:
            raise AssertionError("a cipher was set up although the commitment does not match")

    monkeypatch.setattr(suites, "AESGCM", NoAead)
    with pytest.raises(InvalidSealedData, match="commitment"):
        open_object(wrong, obj)
    header = Header.decode(obj[: header_length(obj)])
    with pytest.raises(InvalidSealedData, match="commitment"):
        Sealer(wrong, header)


def test_tampered_commitment_fails_with_right_dek() -> None:
    obj = seal_object(data(10))
    hlen = header_length(obj)
    with pytest.raises(InvalidSealedData, match="commitment"):
        open_object(DEK, flip(obj, hlen - 5))


def test_declared_size_must_match_records() -> None:
    # A correctly committed header that lies about the size, over genuine records.
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=11)
    sealer = Sealer(DEK, header)
    obj = header.encode() + sealer.seal_record(0, True, data(10))
    with pytest.raises(InvalidSealedData, match="plaintext"):
        open_object(DEK, obj)


def test_wrong_magic_rejected() -> None:
    obj = seal_object(data(10))
    bad = b"IMGWSEAX" + obj[8:]
    with pytest.raises(SealedFormatError, match="magic"):
        open_object(DEK, bad)
    with pytest.raises(SealedFormatError, match="magic"):
        header_length(bad)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version_rejected_before_anything_else(version: int) -> None:
    obj = bytearray(seal_object(data(10)))
    obj[8] = version
    obj[9] = 99  # an unknown suite too: the version must be what is reported
    with pytest.raises(SealedFormatError, match="version"):
        open_object(DEK, bytes(obj))
    with pytest.raises(SealedFormatError, match="version"):
        Header.decode(bytes(obj[:9]))


@pytest.mark.parametrize(
    ("pos", "value", "match"),
    [
        (9, 3, "suite"),
        (10, 0x02, "flags"),
        (10, 0x80, "flags"),
        (23, 0, "upload id length"),
        (23, 65, "upload id length"),
    ],
)
def test_bad_header_fields_rejected(pos: int, value: int, match: str) -> None:
    enc = bytearray(seal_object(b"")[: header_length(seal_object(b""))])
    enc[pos] = value
    with pytest.raises(SealedFormatError, match=match):
        Header.decode(bytes(enc))


def test_header_decode_bounds() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    enc = header.encode()
    with pytest.raises(SealedFormatError):
        Header.decode(enc + b"\x00")  # exact length only
    with pytest.raises(SealedFormatError):
        Header.decode(enc[:-1])
    with pytest.raises(SealedFormatError):
        header_length(enc[:23])
    bad = bytearray(enc)
    bad[11:15] = struct.pack(">I", S - 1)
    with pytest.raises(SealedFormatError, match="segment size"):
        Header.decode(bytes(bad))
    bad = bytearray(enc)
    bad[15:23] = struct.pack(">Q", 5)  # deferred, yet a size
    with pytest.raises(SealedFormatError, match="deferred"):
        Header.decode(bytes(bad))
    bad = bytearray(enc)
    bad[24] = ord(".")
    with pytest.raises(SealedFormatError, match="upload id"):
        Header.decode(bytes(bad))


def test_open_record_checks_position_finality_and_size() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    full = sealer.seal_record(4, False, data(S))
    last = sealer.seal_record(5, True, data(S))
    with pytest.raises(InvalidSealedData):
        sealer.open_record(5, False, full)  # wrong index
    with pytest.raises(InvalidSealedData):
        sealer.open_record(4, True, full)  # non-final presented as final
    with pytest.raises(InvalidSealedData):
        sealer.open_record(5, False, last)  # final presented as non-final
    short = sealer.seal_record(5, True, b"abc")
    with pytest.raises(SealedFormatError):
        sealer.open_record(5, False, short)
    with pytest.raises(SealedFormatError):
        sealer.open_record(5, True, short[:27])
    with pytest.raises(SealedFormatError):
        sealer.open_record(5, True, bytes(S + 29))


def test_tail_piece_bound_to_its_place() -> None:
    header = new_header(DEK, upload_id="u", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    sealer = Sealer(DEK, header)
    piece = sealer.seal_tail(2, 1, 4096, b"some tail bytes")
    for segment, number, start in [(3, 1, 4096), (2, 0, 4096), (2, 2, 4096), (2, 1, 4095)]:
        with pytest.raises(InvalidSealedData):
            sealer.open_tail(segment, number, start, piece)
    with pytest.raises(InvalidSealedData):
        sealer.open_tail(2, 1, 4096, piece[:-1])  # length is bound too
    with pytest.raises(InvalidSealedData):
        sealer.open_tail(2, 1, 4096, flip(piece, 20))
    other = new_header(DEK, upload_id="v", dek_id=DEK_ID, segment_size=S, plaintext_size=None)
    with pytest.raises(InvalidSealedData):
        Sealer(DEK, other).open_tail(2, 1, 4096, piece)
    # A record and a tail piece are never interchangeable.
    record = sealer.seal_record(2, True, b"some tail bytes")
    with pytest.raises(InvalidSealedData):
        sealer.open_tail(2, 0, 0, record)
    with pytest.raises(InvalidSealedData):
        sealer.open_record(2, True, piece)


# --- test vectors ------------------------------------------------------------


def vector_nonces(hexes: list[str]) -> Callable[[], bytes]:
    it: Iterator[bytes] = iter(bytes.fromhex(h) for h in hexes)
    return lambda: next(it)


def vector_header(case: dict[str, Any]) -> Header:
    return new_header(
        bytes.fromhex(VECTORS["dek"]),
        upload_id=case["upload_id"],
        dek_id=bytes.fromhex(VECTORS["dek_id"]),
        segment_size=VECTORS["segment_size"],
        plaintext_size=None if case["length_deferred"] else case["plaintext_len"],
        salt=bytes.fromhex(VECTORS["salt"]),
    )


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors(case: dict[str, Any]) -> None:
    dek = bytes.fromhex(VECTORS["dek"])
    seg = VECTORS["segment_size"]
    header = vector_header(case)
    assert header.encode().hex() == case["header"]
    assert header.digest.hex() == case["header_digest"]
    assert header.commitment.hex() == case["commitment"]
    assert sealed.derive_content_key(dek, header).hex() == case["content_key"]
    sealer = Sealer(dek, header, nonce=vector_nonces(case["nonces"]))
    plaintext = data(case["plaintext_len"])
    obj = bytearray(header.encode())
    for rec in case["records"]:
        i = rec["index"]
        sealed_rec = sealer.seal_record(i, rec["final"], plaintext[i * seg : (i + 1) * seg])
        assert hashlib.sha256(sealed_rec).hexdigest() == rec["sha256"]
        if "hex" in rec:
            assert sealed_rec.hex() == rec["hex"]
        obj += sealed_rec
    assert len(obj) == case["object_size"]
    assert hashlib.sha256(obj).hexdigest() == case["object_sha256"]
    if "object" in case:
        assert obj.hex() == case["object"]
    assert open_object(dek, bytes(obj)) == plaintext


def test_tail_vector() -> None:
    tail = VECTORS["tail"]
    (case,) = [c for c in VECTORS["cases"] if c["name"] == tail["case"]]
    dek = bytes.fromhex(VECTORS["dek"])
    nonce = bytes.fromhex(tail["nonce"])
    sealer = Sealer(dek, vector_header(case), nonce=lambda: nonce)
    start, length = tail["start"], tail["length"]
    plaintext = data(start + length)[start:]
    piece = sealer.seal_tail(tail["segment"], tail["piece"], start, plaintext)
    assert piece.hex() == tail["piece_hex"]
    assert sealer.open_tail(tail["segment"], tail["piece"], start, piece) == plaintext


def test_small_vector_from_the_spec_alone() -> None:
    """Rebuild the "small" vector with raw primitives, following docs/FORMAT.md only."""
    (case,) = [c for c in VECTORS["cases"] if c["name"] == "small"]
    dek, salt = bytes.fromhex(VECTORS["dek"]), bytes.fromhex(VECTORS["salt"])
    dek_id, seg = bytes.fromhex(VECTORS["dek_id"]), VECTORS["segment_size"]
    uid = case["upload_id"].encode()
    n = case["plaintext_len"]
    label = b"imgw-seal/v1"

    def hkdf(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dek)

    body = struct.pack(">8sBBBIQB", b"IMGWSEAL", 1, 1, 0, seg, n, len(uid)) + uid + salt + dek_id
    commitment = hkdf(label + b"/commit" + hashlib.sha256(body).digest())
    header = body + commitment
    digest = hashlib.sha256(header).digest()
    key = hkdf(label + b"/content" + b"\x01" + uid)
    nonce = bytes.fromhex(case["nonces"][0])
    aad = label + b"/seg" + digest + struct.pack(">QBI", 0, 1, n)
    record = nonce + AESGCM(key).encrypt(nonce, data(n), aad)
    assert (header + record).hex() == case["object"]
