"""The reader opens each record in pooled buffers: what it passes on is bytes copies of
bounded size, every buffer goes back (also when a read is closed early or fails), and
its checks against the catalog are as strict as ever."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import reader as reader_module
from gateway.buffers import BufferPool, Pools, SizedBuffers
from gateway.catalog.base import Upload
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.keys.keyring import LocalKeyring
from gateway.layout import data_key
from gateway.reader import NotAsRecorded, Reader
from gateway.sealed import MIN_SEGMENT_SIZE, RECORD_OVERHEAD, record_offset
from gateway.store.base import ObjectStore
from gateway.store.folder import FolderStore
from gateway.wiring import build_services
from tests.fakes import MemoryStore, OutBuffers
from tests.test_uploads import ME, body

SEGMENT = MIN_SEGMENT_SIZE


class CountingPool(BufferPool, OutBuffers):
    """Hands out dirty buffers and knows which are out."""

    def __init__(self, size: int, keep: int) -> None:
        BufferPool.__init__(self, size, keep)
        OutBuffers.__init__(self)

    def take(self) -> bytearray:
        return self.handed(super().take())

    def give(self, buf: bytearray) -> None:
        self.back(buf)
        super().give(buf)


class CountingPools(Pools):
    def __init__(self) -> None:
        self.released: list[int] = []  # sizes reported freed to the trimmer
        super().__init__(keep=4, sized=SizedBuffers(released=self.released.append))
        self.made: dict[int, CountingPool] = {}
        self._made_lock = threading.Lock()

    def for_size(self, size: int, keep: int | None = None) -> BufferPool:
        with self._made_lock:
            if size not in self.made:
                self.made[size] = CountingPool(size, 4 if keep is None else keep)
            return self.made[size]

    def takes(self, size: int) -> int:
        return self.made[size].takes if size in self.made else 0

    def out(self) -> int:
        return sum(len(p.out) for p in self.made.values())


@dataclass
class Stored:
    store: ObjectStore
    catalog: SQLiteCatalog
    keys: LocalKeyring
    upload: Upload
    data: bytes

    def reader(self, pools: Pools) -> Reader:
        return Reader(self.store, self.catalog, self.keys, pools=pools)


async def store_upload(tmp_path: Path, store: ObjectStore, data: bytes) -> Stored:
    settings = Settings(data_dir=tmp_path, segment_size=SEGMENT)
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    keys = LocalKeyring.open(tmp_path / "k.json")
    services = build_services(settings, store=store, catalog=catalog, keys=keys)
    try:
        service = services.uploads
        upload = await service.create(ME, length=len(data), metadata=None)
        done, _ = await service.write(ME, upload.id, offset=0, body=body(data))
    finally:
        await services.close()
    return Stored(store, catalog, keys, done, data)


@pytest.fixture
async def folder(tmp_path: Path) -> AsyncIterator[Stored]:
    stored = await store_upload(
        tmp_path, FolderStore(tmp_path / "objects"), os.urandom(3 * SEGMENT + 1234)
    )
    yield stored
    stored.catalog.close()


def test_records_are_read_and_opened_in_place_in_pooled_buffers_given_back(
    folder: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "CHUNK", 10_000)
    pools = CountingPools()
    reader = folder.reader(pools)
    chunks = list(reader.read(folder.upload))
    assert b"".join(chunks) == folder.data
    # Copies, never views of a buffer that is reused, and none longer than CHUNK.
    assert all(type(c) is bytes and 0 < len(c) <= 10_000 for c in chunks)
    assert pools.takes(SEGMENT + RECORD_OVERHEAD) == 4  # each record, read into one
    assert pools.takes(SEGMENT) == 0  # and opened where it lies: no second buffer
    assert pools.out() == 0 and pools.released == []


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 1), (SEGMENT - 5, SEGMENT + 5), (SEGMENT, 2 * SEGMENT), (100, 3 * SEGMENT + 1234)],
)
def test_ranges_read_back_exactly(folder: Stored, start: int, end: int) -> None:
    pools = CountingPools()
    got = b"".join(folder.reader(pools).read(folder.upload, start, end))
    assert got == folder.data[start:end] and pools.out() == 0


def test_a_read_closed_early_gives_its_buffers_back(folder: Stored) -> None:
    pools = CountingPools()
    chunks = folder.reader(pools).read(folder.upload)
    first = next(chunks)
    assert first == folder.data[: len(first)]
    assert pools.out() == 1  # the record, its plaintext where its ciphertext was
    chunks.close()
    assert pools.out() == 0


def test_a_damaged_record_is_refused_and_its_buffers_come_back(folder: Stored) -> None:
    assert isinstance(folder.store, FolderStore)
    key = data_key(folder.upload.id)
    blob = bytearray(folder.store.get(key))
    at = record_offset(len(folder.upload.header), SEGMENT, 1) + 100  # record 1's ciphertext
    blob[at] ^= 1
    folder.store.put(key, bytes(blob))
    pools = CountingPools()
    chunks = folder.reader(pools).read(folder.upload)
    got = next(chunks)  # record 0 is fine
    with pytest.raises(NotAsRecorded):  # record 1 is not the sealing that was recorded
        for chunk in chunks:
            got += chunk
    assert got == folder.data[: len(got)] and len(got) == SEGMENT
    assert pools.out() == 0


def test_a_record_shorter_than_recorded_is_refused(folder: Stored) -> None:
    """A store that reads into buffers cannot hand over more than the record's size;
    fewer bytes (an object cut short under the reader) fail the recorded digest."""
    assert isinstance(folder.store, FolderStore)
    key = data_key(folder.upload.id)
    blob = folder.store.get(key)
    chunks = folder.reader(CountingPools()).read(folder.upload)
    next(chunks)  # every object was checked (its size among them) before this
    folder.store.put(key, blob[: record_offset(len(folder.upload.header), SEGMENT, 2) - 1])
    with pytest.raises(NotAsRecorded):
        list(chunks)


async def test_a_store_that_reads_no_buffers_still_opens_into_pooled_ones(
    tmp_path: Path,
) -> None:
    stored = await store_upload(tmp_path, MemoryStore(), os.urandom(SEGMENT + 10))
    try:
        pools = CountingPools()
        assert b"".join(stored.reader(pools).read(stored.upload)) == stored.data
        assert pools.takes(SEGMENT) == 2 and pools.takes(SEGMENT + RECORD_OVERHEAD) == 0
        assert pools.out() == 0
        # The sealed bytes it returned, freed once opened, are counted for the trimmer.
        assert pools.released == [SEGMENT + RECORD_OVERHEAD, 10 + RECORD_OVERHEAD]
    finally:
        stored.catalog.close()


def test_many_reads_at_once_leave_few_idle_buffers_behind(folder: Stored) -> None:
    pools = Pools(keep=8, sized=SizedBuffers())
    reader = folder.reader(pools)
    reads = [reader.read(folder.upload) for _ in range(4)]
    for read in reads:
        next(read)  # each holds its first record's plaintext
    for read in reads:
        assert b"".join(read)
    # Four record buffers were out at once: not the pools' own keep of 8 stay idle.
    assert len(pools.for_size(SEGMENT + RECORD_OVERHEAD)._free) == reader_module.READ_KEEP
