"""Short bodies kept whole, sealed tail pieces and merges use pooled buffers: every one
taken goes back, and the bytes come out exact though the buffers come back dirty."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import pytest

from gateway import wiring
from gateway.buffers import SIZED_IDLE, SizedBuffers
from gateway.catalog.base import TailPiece
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.keys.keyring import LocalKeyring
from gateway.writer import BodyInterrupted
from gateway.writer.base import Fragment
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.record import Record
from gateway.writer.tail import TailPieces
from tests.fakes import InPlaceMemoryStore, MemoryStore, OutBuffers
from tests.test_uploads import ME, body, read

KiB = 1024
SEGMENT = 512 * KiB


class DirtyBuffers(SizedBuffers, OutBuffers):
    """Hands out buffers full of another request's bytes; knows which are out."""

    made: ClassVar[list[DirtyBuffers]] = []

    def __init__(self, idle: int = SIZED_IDLE, released: Callable[[int], None] | None = None):
        SizedBuffers.__init__(self, idle, released)
        OutBuffers.__init__(self)
        DirtyBuffers.made.append(self)

    def take(self, size: int) -> bytearray:
        return self.handed(super().take(size))

    def give(self, buf: bytearray) -> None:
        self.back(buf)
        super().give(buf)


class Rooms:
    """Per tail piece put: whether it is sealed in a pooled buffer of `sized`, and how
    many of its buffers are out as the piece is stored."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[bool, int]] = []
        self.sized: DirtyBuffers | None = None
        original = TailPieces.put_room

        def put_room(tails: TailPieces, piece: TailPiece, room: bytearray) -> None:
            assert self.sized is not None
            self.seen.append((any(b is room for b in self.sized.out), len(self.sized.out)))
            original(tails, piece, room)

        monkeypatch.setattr(TailPieces, "put_room", put_room)


@pytest.fixture(params=["whole parts", "in place"])
def store(request: pytest.FixtureRequest) -> MemoryStore:
    return MemoryStore() if request.param == "whole parts" else InPlaceMemoryStore()


async def test_kept_whole_bodies_merges_and_cut_records_give_every_buffer_back(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wiring, "SizedBuffers", DirtyBuffers)
    DirtyBuffers.made.clear()
    settings = Settings(data_dir=tmp_path, segment_size=SEGMENT, tail_merge_after=2)
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    services = wiring.build_services(
        settings, store=store, catalog=catalog, keys=LocalKeyring.open(tmp_path / "k.json")
    )
    (sized,) = DirtyBuffers.made
    service = services.uploads
    data = os.urandom(2 * SEGMENT + 1000)

    async def cut(at: int, end: int) -> AsyncIterator[bytes]:
        yield data[at:end]
        raise BodyInterrupted

    try:
        upload = await service.create(ME, length=len(data), metadata=None)
        offset = 0
        # Kept whole, then kept whole and merged with the two before (merge_after=2).
        for size in (100 * KiB, 70 * KiB, 30 * KiB + 7):
            await service.write(
                ME, upload.id, offset=offset, body=body(data[offset : offset + size]),
                content_length=size,
            )  # fmt: skip
            offset += size
        # Runs past its segment: streamed into a record, cut, its bytes recovered.
        await service.write(
            ME, upload.id, offset=offset, body=cut(offset, offset + 200 * KiB),
            content_length=SEGMENT,
        )  # fmt: skip
        offset += 200 * KiB
        # Kept whole, cut short: what came is saved.
        await service.write(
            ME, upload.id, offset=offset, body=cut(offset, offset + 10 * KiB),
            content_length=50 * KiB,
        )  # fmt: skip
        offset += 10 * KiB
        assert (await service.get(ME, upload.id)).offset == offset
        assert sized.takes >= 5 and sized.out == []
        done, _ = await service.write(ME, upload.id, offset=offset, body=body(data[offset:]))
        assert read(service, done) == data
        assert sized.out == []
    finally:
        await services.close()
        catalog.close()


@contextlib.asynccontextmanager
async def dirty_services(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[wiring.Services, DirtyBuffers]]:
    """The app's services, their sized buffers handing out dirty ones."""
    monkeypatch.setattr(wiring, "SizedBuffers", DirtyBuffers)
    DirtyBuffers.made.clear()
    settings = Settings(data_dir=tmp_path, segment_size=SEGMENT)
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    services = wiring.build_services(
        settings, store=store, catalog=catalog, keys=LocalKeyring.open(tmp_path / "k.json")
    )
    try:
        (sized,) = DirtyBuffers.made
        yield services, sized
    finally:
        await services.close()
        catalog.close()


async def test_bytes_read_back_for_a_segment_go_to_its_record_in_a_pooled_buffer(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_back: list[bool] = []  # per fragment read back: whether it is in a pooled buffer

    def hand(self: SealingPipeline, record: Record, fragment: Fragment) -> None:
        view, new, buffer = fragment
        if not new:
            read_back.append(any(b is buffer for b in sized.out) and view.obj is buffer)
        original(self, record, fragment)

    original = SealingPipeline.hand
    monkeypatch.setattr(SealingPipeline, "hand", hand)
    data = os.urandom(SEGMENT + 1000)
    async with dirty_services(tmp_path, store, monkeypatch) as (services, sized):
        service = services.uploads
        budget = service.writes.budget
        upload = await service.create(ME, length=len(data), metadata=None)
        await service.write(ME, upload.id, offset=0, body=body(data[:1000]), content_length=1000)
        # A body that never came: the bytes read back for it go back unused.
        await service.write(ME, upload.id, offset=1000, body=body(b""))
        assert read_back == [] and sized.out == [] and budget.free == budget.total
        # This one fills the segment: the bytes read back go in front of it, sealed.
        await service.write(ME, upload.id, offset=1000, body=body(data[1000:SEGMENT]))
        assert read_back == [True] and sized.out == [] and budget.free == budget.total
        done, _ = await service.write(ME, upload.id, offset=SEGMENT, body=body(data[SEGMENT:]))
        assert read(service, done) == data


async def test_a_cut_records_plaintext_is_recovered_into_a_pooled_buffer(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms = Rooms(monkeypatch)
    data = os.urandom(SEGMENT + 1000)

    async def cut(end: int) -> AsyncIterator[bytes]:
        yield data[:end]
        raise BodyInterrupted

    async with dirty_services(tmp_path, store, monkeypatch) as (services, sized):
        rooms.sized = sized
        service = services.uploads
        upload = await service.create(ME, length=len(data), metadata=None)
        # Streamed into a record (it runs past its segment), cut: its bytes recovered.
        await service.write(ME, upload.id, offset=0, body=cut(300 * KiB), content_length=SEGMENT)
        # Sealed in one pooled buffer: the recovered plaintext's went back before.
        assert rooms.seen == [(True, 1)] and sized.out == []
        assert sized.idle >= 300 * KiB  # the buffers came back, to be taken again
        rest = data[300 * KiB :]
        done, _ = await service.write(ME, upload.id, offset=300 * KiB, body=body(rest))
        assert read(service, done) == data


async def test_a_body_kept_whole_is_sealed_in_the_buffer_it_was_received_in(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms = Rooms(monkeypatch)
    data = os.urandom(SEGMENT + 1000)
    async with dirty_services(tmp_path, store, monkeypatch) as (services, sized):
        rooms.sized = sized
        service = services.uploads
        upload = await service.create(ME, length=len(data), metadata=None)
        await service.write(
            ME, upload.id, offset=0, body=body(data[: 100 * KiB]), content_length=100 * KiB
        )
        # Only the body's own buffer: no second one to seal into.
        assert rooms.seen == [(True, 1)] and sized.takes == 1 and sized.out == []
        rest = data[100 * KiB :]
        done, _ = await service.write(ME, upload.id, offset=100 * KiB, body=body(rest))
        assert read(service, done) == data


async def test_a_read_back_cancelled_in_its_thread_never_goes_back_to_the_pool(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request is cancelled while a worker thread still reads the tail pieces into
    the buffer: the buffer stays that thread's, and the budget gets its bytes back."""
    loading, go_on = threading.Event(), threading.Event()
    into: list[bytearray] = []

    def load_into(self: TailPieces, pieces: list[TailPiece], covers: int, out: bytearray) -> None:
        into.append(out)
        loading.set()
        go_on.wait(5)
        original(self, pieces, covers, out)

    original = TailPieces.load_into
    monkeypatch.setattr(TailPieces, "load_into", load_into)
    data = os.urandom(SEGMENT + 1000)
    async with dirty_services(tmp_path, store, monkeypatch) as (services, sized):
        service = services.uploads
        budget = service.writes.budget
        upload = await service.create(ME, length=len(data), metadata=None)
        await service.write(ME, upload.id, offset=0, body=body(data[:1000]), content_length=1000)
        write = asyncio.create_task(
            service.write(ME, upload.id, offset=1000, body=body(data[1000:SEGMENT]))
        )
        while not loading.is_set():
            await asyncio.sleep(0.005)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        go_on.set()
        (buffer,) = into
        assert [b for b in sized.out if b is buffer] == [buffer]  # never given back
        assert budget.free == budget.total
