"""The sealing pipeline: records sealed as their bytes are handed over, then stored."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from gateway.buffers import Pools
from gateway.catalog.base import Upload, UploadState
from gateway.runner import Runner
from gateway.sealed import (
    MIN_SEGMENT_SIZE,
    RECORD_OVERHEAD,
    SUITE_AES256GCM,
    Sealer,
    new_header,
    open_object,
)
from gateway.store.base import ObjectStore, PartRef, StaleWrite, StoreUnavailable
from gateway.writer import RunningHash
from gateway.writer.base import Batch, Fragment
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.record import Record, Signal
from tests.fakes import InPlaceMemoryStore, MemoryStore

S = MIN_SEGMENT_SIZE
DEK = bytes(range(32))


def upload_in(
    store: ObjectStore, length: int, *, dek: bytes = DEK, suite: int = SUITE_AES256GCM
) -> tuple[Upload, Sealer]:
    header = new_header(
        dek, upload_id="U", dek_id=b"\1" * 16, segment_size=S, plaintext_size=length, suite=suite
    )
    upload = Upload(
        id="U",
        owner="me",
        tenant="t",
        length=length,
        offset=0,
        metadata=None,
        state=UploadState.ACTIVE,
        created_at=0.0,
        expires_at=None,
        segment_size=S,
        header=header.encode(),
        dek_id=header.dek_id,
        multipart_id=store.start_multipart("U/data"),
    )
    return upload, Sealer(dek, header)


def pipeline(
    store: ObjectStore,
    runner: Runner,
    length: int,
    given: list[bytearray] | None = None,
    running: RunningHash | None = None,
    *,
    dek: bytes = DEK,
    suite: int = SUITE_AES256GCM,
) -> tuple[SealingPipeline, Upload]:
    upload, sealer = upload_in(store, length, dek=dek, suite=suite)

    def give_back(batch: Batch, lent: bool = False) -> None:
        for _, _, buffer in batch:
            if buffer is not None and given is not None:
                given.append(buffer)

    return SealingPipeline(
        upload=upload,
        sealer=sealer,
        store=store,
        runner=runner,
        fence=lambda: 1,
        pools=Pools(keep=0),
        give_back=give_back,
        client_hash=None,
        running=running,
    ), upload


def fragments(data: bytes, size: int) -> list[Fragment]:
    return [
        (memoryview(bytearray(data[at : at + size])), True, None)
        for at in range(0, len(data), size)
    ]


@pytest.mark.parametrize("make_store", [MemoryStore, InPlaceMemoryStore])
async def test_records_handed_in_fragments_make_the_sealed_object(
    runner: Runner, make_store: Callable[[], MemoryStore]
) -> None:
    store = make_store()
    data = bytes(range(256)) * (S // 256) + b"the end"
    running = RunningHash(0)
    sealing, upload = pipeline(store, runner, len(data), running=running)
    rows = []
    for index, start in enumerate((0, S)):
        part = data[start : start + S]
        record = sealing.start(index, index == 1, len(part))
        for fragment in fragments(part, 5000):
            sealing.hand(record, fragment)
        sealing.signal(record, Signal.CLOSE)
        assert record.task is not None
        rows.append(await record.task)
    assert [r.index for r in rows if r is not None] == [0, 1]
    assert sealing.running is running and running.next_index == 2
    assert running.digest.digest() == hashlib.sha256(data).digest()
    refs = [
        PartRef(r.index + 1, sealing.part_offset(r.index), r.size, r.etag)
        for r in rows
        if r is not None
    ]
    assert upload.multipart_id is not None
    store.complete_multipart("U/data", upload.multipart_id, refs)
    assert open_object(DEK, store.objects["U/data"]) == data


async def cut_record(sealing: SealingPipeline, data: bytes, size: int) -> Record:
    """Record 0, handed `data` in fragments of `size`, then cut: nothing stored."""
    record = sealing.start(0, False, S)
    for fragment in fragments(data, size):
        sealing.hand(record, fragment)
    sealing.signal(record, Signal.CUT)
    assert record.task is not None
    assert await record.task is None
    return record


@pytest.mark.parametrize("make_store", [MemoryStore, InPlaceMemoryStore])
async def test_a_record_cut_short_gives_back_its_plaintext(
    runner: Runner, make_store: Callable[[], MemoryStore]
) -> None:
    store = make_store()
    sealing, _ = pipeline(store, runner, 2 * S)
    record = await cut_record(sealing, b"partial bytes" * 100, 999)
    assert record.done == 1300
    whole = bytearray(record.done)
    sealing.recover_into(record, 0, memoryview(whole))
    assert whole == b"partial bytes" * 100
    part = bytearray(700)  # from the middle of a counter block: only these decrypted
    sealing.recover_into(record, 301, memoryview(part))
    assert part == (b"partial bytes" * 100)[301:1001]
    with pytest.raises(ValueError):
        sealing.recover_into(record, 1000, memoryview(bytearray(301)))  # past what it sealed


async def test_a_cut_record_read_back_slice_by_slice_decrypts_only_its_range(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading back a cut record from an in-place store takes one slice-sized buffer,
    however long the record: small slices here, so ranges cross their edges and the
    nonce in front."""
    monkeypatch.setattr("gateway.writer.pipeline.SLICE", 4096)
    store = InPlaceMemoryStore()
    sealing, _ = pipeline(store, runner, 2 * S)
    data = bytes(range(256)) * 200  # 51,200 bytes: 13 slices with the nonce
    record = await cut_record(sealing, data, 3001)
    for start, length in [(0, len(data)), (0, 1), (4084, 24), (4095, 4097), (50_000, 1200)]:
        out = bytearray(b"\xaa" * (length + 5))  # a pooled buffer: dirty, larger
        sealing.recover_into(record, start, memoryview(out)[:length])
        assert out[:length] == data[start : start + length]
        assert out[length:] == b"\xaa" * 5


@pytest.mark.parametrize("damage", ["overwritten", "cut short"])
async def test_a_cut_record_read_back_changed_is_refused(runner: Runner, damage: str) -> None:
    """A newer writer wrote over the record (or truncated it) after this request was
    cut: its bytes no longer hash to what this request wrote, so it lost, whether or
    not the change lies in the range asked for."""
    store = InPlaceMemoryStore()
    sealing, upload = pipeline(store, runner, 2 * S)
    record = await cut_record(sealing, b"partial bytes" * 100, 999)
    assert upload.multipart_id is not None
    span = store.spans[upload.multipart_id]
    if damage == "overwritten":
        span[len(span) - 1] ^= 1  # the last byte written; the range asked is the first
    else:
        del span[len(span) - 1 :]
    with pytest.raises(StaleWrite):
        sealing.recover_into(record, 0, memoryview(bytearray(100)))


class Slice(bytearray):
    """A slice a weak reference can follow (bytearray itself takes none)."""


async def test_a_record_waiting_for_more_bytes_holds_none_it_gave_back(
    runner: Runner,
) -> None:
    """A slow client's record task waits seconds between batches. Buffers it gave back
    may be dropped by their pool (it keeps only so many idle): a reference the waiting
    task kept would hold each one alive, unaccounted (found under load: 200 mobile
    uploads held 100-190 MiB of such buffers)."""
    given: list[bytearray] = []
    sealing, _ = pipeline(MemoryStore(), runner, 2 * S, given)
    record = sealing.start(0, False, S)
    buffer = Slice(b"x" * 1000)
    sealing.hand(record, (memoryview(buffer), True, buffer))
    while record.queued:  # sealed, and given back
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the task waits for its next batch
    assert given == [buffer]
    alive = weakref.ref(buffer)
    del buffer
    given.clear()  # the pool dropped it
    gc.collect()
    assert alive() is None, "the waiting record task still holds the given-back buffer"
    sealing.signal(record, Signal.CUT)
    assert record.task is not None
    assert await record.task is None


async def test_a_failed_seal_waits_for_the_plaintext_hash_before_giving_slices_back(
    runner: Runner,
) -> None:
    """Regression: when sealing a batch failed, its slices went back to the shared pool
    (for another upload to fill) while the thread hashing its plaintext still read it."""
    hashing = threading.Event()
    given_while_hashing: list[bool] = []

    class Watched(SealingPipeline):
        def hash_plain(self, record: Record, batch: Batch) -> None:
            hashing.set()
            time.sleep(0.3)
            super().hash_plain(record, batch)
            hashing.clear()

    store = InPlaceMemoryStore()
    upload, sealer = upload_in(store, 4 * S)

    def give_back(batch: Batch, lent: bool = False) -> None:
        given_while_hashing.extend(hashing.is_set() for _ in batch)

    sealing = Watched(
        upload=upload,
        sealer=sealer,
        store=store,
        runner=runner,
        fence=lambda: 1,
        pools=Pools(keep=0),
        give_back=give_back,
        client_hash=None,
        running=RunningHash(0),
    )
    store.spans_fail_after = 1  # the record's nonce is written, its first batch fails
    record = sealing.start(0, False, S)
    slice_ = bytearray(S)
    sealing.hand(record, (memoryview(slice_), True, slice_))
    sealing.signal(record, Signal.CLOSE)
    assert record.task is not None
    with pytest.raises(StoreUnavailable):
        await record.task
    assert given_while_hashing == [False]


async def test_a_record_cancelled_while_its_threads_seal_never_pools_their_buffers(
    runner: Runner,
) -> None:
    """Cancelled (the event loop shutting down), a record's task must not give back the
    slices and the record buffer its threads still use: another upload would fill them
    under those threads."""
    sealing_started = threading.Event()
    record_buffers: list[bytearray | None] = []

    class Slow(SealingPipeline):
        def absorb(self, record: Record, batch: Batch) -> None:
            record_buffers.append(record.buffer)
            sealing_started.set()
            time.sleep(0.2)
            super().absorb(record, batch)

    store = MemoryStore()
    upload, sealer = upload_in(store, 4 * S)
    pools, lent = Pools(keep=4), []

    def give_back(batch: Batch, was_lent: bool = False) -> None:
        lent.append(was_lent)

    sealing = Slow(
        upload=upload,
        sealer=sealer,
        store=store,
        runner=runner,
        fence=lambda: 1,
        pools=pools,
        give_back=give_back,
        client_hash=None,
        running=RunningHash(0),
    )
    record = sealing.start(0, False, S)
    slice_ = bytearray(S)
    sealing.hand(record, (memoryview(slice_), True, slice_))
    while not sealing_started.is_set():
        await asyncio.sleep(0.005)
    assert record.task is not None
    record.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await record.task
    assert lent == [True] and record.lent
    (record_buffer,) = record_buffers
    assert record_buffer is not None
    assert pools.for_size(S + RECORD_OVERHEAD).take() is not record_buffer
