"""The sealing pipeline under suite 2: SM3 record and plaintext digests, SHA-256 parts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from gateway.catalog.base import RecordRow, Upload
from gateway.runner import Runner
from gateway.sealed import MIN_SEGMENT_SIZE, SUITE_SM4GCM, open_object
from gateway.store.base import PartRef
from gateway.suites import SM
from gateway.writer import RunningHash
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.record import Signal
from tests.fakes import InPlaceMemoryStore, MemoryStore
from tests.test_writer_pipeline import pipeline

S = MIN_SEGMENT_SIZE
DEK = bytes(range(16))


def sealing_for(
    store: MemoryStore, runner: Runner, length: int, running: RunningHash | None
) -> tuple[SealingPipeline, Upload]:
    return pipeline(store, runner, length, running=running, dek=DEK, suite=SUITE_SM4GCM)


@pytest.mark.parametrize("make_store", [MemoryStore, InPlaceMemoryStore])
async def test_records_are_recorded_with_sm3_and_stored_with_sha256_parts(
    runner: Runner, make_store: Callable[[], MemoryStore]
) -> None:
    store = make_store()  # its parts must come with their SHA-256, whatever the suite
    data = bytes(range(256)) * (S // 256) + b"the end"
    running = RunningHash(0, SM.hash())
    sealing, upload = sealing_for(store, runner, len(data), running)
    rows: list[RecordRow] = []
    for index, start in enumerate((0, S)):
        part = data[start : start + S]
        record = sealing.start(index, index == 1, len(part))
        for at in range(0, len(part), 5000):
            sealing.hand(record, (memoryview(bytearray(part[at : at + 5000])), True, None))
        sealing.signal(record, Signal.CLOSE)
        assert record.task is not None
        row = await record.task
        assert row is not None
        rows.append(row)
    assert running.digest.digest() == SM.hash(data).digest()
    refs = [PartRef(r.index + 1, sealing.part_offset(r.index), r.size, r.etag) for r in rows]
    assert upload.multipart_id is not None
    store.complete_multipart("U/data", upload.multipart_id, refs)
    stored = store.objects["U/data"]
    assert open_object(DEK, stored) == data
    hlen = len(upload.header)
    first, second = stored[hlen : hlen + S + 28], stored[hlen + S + 28 :]
    assert [r.sha256 for r in rows] == [SM.hash(first).digest(), SM.hash(second).digest()]
    assert rows[1].sha256 != hashlib.sha256(second).digest()


@pytest.mark.parametrize("make_store", [MemoryStore, InPlaceMemoryStore])
async def test_a_record_cut_short_gives_back_its_plaintext(
    runner: Runner, make_store: Callable[[], MemoryStore]
) -> None:
    sealing, _ = sealing_for(make_store(), runner, 2 * S, None)
    record = sealing.start(0, False, S)
    sealing.hand(record, (memoryview(bytearray(b"partial bytes" * 100)), True, None))
    sealing.signal(record, Signal.CUT)
    assert record.task is not None
    assert await record.task is None
    out = bytearray(record.done - 5)
    sealing.recover_into(record, 5, memoryview(out))
    assert out == (b"partial bytes" * 100)[5:]
