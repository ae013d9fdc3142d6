"""Property-based tests of reading sealed objects: random corruptions of real ones (bit
flips, truncations, extensions, splices from elsewhere in the object or from another
object under the same key) are refused, never read back as other bytes. Twice: the
format alone (gateway/sealed.py's open_object), and the gateway's Reader on an upload
stored by the uploads service, whole and by ranges."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog.base import Principal, Upload
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.keys.keyring import LocalKeyring
from gateway.layout import data_key
from gateway.metadata import open_metadata, seal_metadata
from gateway.reader import NotReadable, Reader
from gateway.sealed import (
    Header,
    InvalidSealedData,
    Sealer,
    header_length,
    new_header,
    open_object,
)
from gateway.wiring import build_services
from tests.fakes import MemoryStore

FUZZ = settings(max_examples=200, deadline=None)
S = 64 * 1024  # the smallest segment: several records in a small object
DEK = os.urandom(32)
Mutation = Callable[[bytes], bytes]


def seal(plaintext: bytes, upload_id: str = "fuzzupload0000000000000") -> bytes:
    header = new_header(
        DEK, upload_id=upload_id, dek_id=bytes(16), segment_size=S, plaintext_size=len(plaintext)
    )
    sealer = Sealer(DEK, header)
    pieces = [plaintext[i : i + S] for i in range(0, len(plaintext), S)]
    if not pieces or len(pieces[-1]) == S:
        pieces.append(b"")  # a multiple of the segment ends with an empty final record
    records = [sealer.seal_record(i, i == len(pieces) - 1, p) for i, p in enumerate(pieces)]
    return header.encode() + b"".join(records)


PLAIN = os.urandom(2 * S + 1234)
SEALED = seal(PLAIN)
OTHER = seal(os.urandom(len(PLAIN)))  # same key, same id, another salt and other bytes


@st.composite
def mutations(draw: st.DrawFn, size: int) -> Mutation:
    """One corruption of an object of `size` bytes."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "graft"]))
    if kind == "flip":
        at, bit = draw(st.integers(0, size - 1)), draw(st.integers(0, 7))
        return lambda d: d[:at] + bytes([d[at] ^ (1 << bit)]) + d[at + 1 :]
    if kind == "truncate":
        cut = draw(st.integers(0, size - 1))
        return lambda d: d[:cut]
    if kind == "extend":
        extra = draw(st.binary(min_size=1, max_size=64))
        return lambda d: d + extra
    start = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, min(3 * S, size - start)))
    source = draw(st.integers(0, size - length))
    if source == start:  # not a no-op
        source = (source + 1) % (size - length + 1)
    if kind == "splice":  # bytes from elsewhere in the same object
        return lambda d: d[:start] + d[source : source + length] + d[start + length :]
    return lambda d: d[:start] + OTHER[source : source + length] + d[start + length :]


@FUZZ
@given(mutations(len(SEALED)))
def test_a_corrupted_object_never_opens_to_other_bytes(mutate: Mutation) -> None:
    assert open_object(DEK, SEALED) == PLAIN
    corrupted = mutate(SEALED)
    if corrupted == SEALED:
        return  # a splice of identical bytes
    with pytest.raises(InvalidSealedData):
        open_object(DEK, corrupted)


@FUZZ
@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=300), st.data())
def test_corrupted_sealed_metadata_never_opens(metadata: str, data: st.DataObject) -> None:
    """Upload-Metadata as the catalog keeps it: sealed under the upload's key
    (gateway/metadata.py); any header round-trips, any change is refused."""
    sealer = Sealer(DEK, Header.decode(SEALED[: header_length(SEALED)]))
    sealed = seal_metadata(sealer, metadata)
    assert sealed is not None
    assert open_metadata(sealer, sealed) == metadata
    corrupted = data.draw(mutations(len(sealed)))(sealed)
    if corrupted != sealed:
        with pytest.raises(InvalidSealedData):
            open_metadata(sealer, corrupted)
    with pytest.raises(InvalidSealedData):
        sealer.open_value("manifest", sealed)  # a value moved to another name


@dataclass
class Stored:
    store: MemoryStore
    reader: Reader
    upload: Upload
    plaintext: bytes


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """An upload sent in three PATCHes (a tail piece among them) by the uploads service."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-reader")
    store = MemoryStore()
    catalog = SQLiteCatalog(tmp / "catalog.sqlite3")
    keys = LocalKeyring.open(tmp / "keyring.json")
    me = Principal("fuzz", "t")
    data = os.urandom(3 * S + 777)

    async def one(piece: bytes) -> AsyncIterator[bytes]:
        yield piece

    async def send() -> Upload:
        services = build_services(
            Settings(data_dir=tmp, segment_size=S), store=store, catalog=catalog, keys=keys
        )
        try:
            upload = await services.uploads.create(me, length=len(data), metadata=None)
            offset = 0
            for size in (S + 100, 5000, len(data)):
                piece = data[offset : offset + size]
                await services.uploads.write(me, upload.id, offset=offset, body=one(piece))
                offset += len(piece)
            return await services.uploads.get(me, upload.id)
        finally:
            await services.close()

    upload = asyncio.run(send())
    yield Stored(store, Reader(store, catalog, keys), upload, data)
    catalog.close()


@FUZZ
@given(st.data())
def test_the_reader_refuses_a_corrupted_object(stored: Stored, data: st.DataObject) -> None:
    key = data_key(stored.upload.id)
    original = stored.store.objects[key]
    mutate = data.draw(mutations(len(original)))
    length = len(stored.plaintext)
    start = data.draw(st.integers(0, length - 1))
    end = data.draw(st.integers(start + 1, length))
    corrupted = mutate(original)
    stored.store.objects[key] = corrupted
    try:
        for lo, hi in ((0, length), (start, end)):
            try:
                got = b"".join(stored.reader.read(stored.upload, lo, hi))
            except (InvalidSealedData, NotReadable):
                continue
            # A range may miss the corrupted bytes; whatever is returned is what was sent.
            assert got == stored.plaintext[lo:hi]
            assert corrupted == original or (lo, hi) != (0, length), "a corrupted object read whole"
    finally:
        stored.store.objects[key] = original
