"""The uploads service on its own: in-memory store, real SQLite catalog and keyring."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import manifest
from gateway.catalog.base import Principal, Upload, UploadState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.checksums import new_hasher
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.keys.keyring import LocalKeyring
from gateway.limits import ReceiveBudget
from gateway.reader import Reader
from gateway.runner import answering
from gateway.store.base import StoreUnavailable
from gateway.tus.headers import ChecksumHeader
from gateway.types import Buffer
from gateway.uploads import Uploads
from gateway.wiring import build_services
from gateway.writer import WITHDRAWN, Body, BodyInterrupted
from gateway.writer.pipeline import SealingPipeline
from gateway.writer.receive import QUIET_READ, SLICE
from gateway.writer.segment import NEAR_END
from tests.fakes import InPlaceMemoryStore, MemoryStore
from tests.tushttp import catalog_files_holding

S = 64 * 1024
ME = Principal("alice", "t1")
COMPLETE = UploadState.COMPLETE


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["whole parts", "in place"])
def store(request: pytest.FixtureRequest) -> MemoryStore:
    # Records reach the store whole (as S3 takes them) or in spans as they are sealed
    # (as the folder store takes them).
    return MemoryStore() if request.param == "whole parts" else InPlaceMemoryStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(tmp_path: Path, store: MemoryStore, clock: Clock) -> AsyncIterator[Uploads]:
    settings = Settings(data_dir=tmp_path, segment_size=S, acquire_timeout=3.0, upload_ttl=100)
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    services = build_services(
        settings,
        store=store,
        catalog=catalog,
        keys=LocalKeyring.open(tmp_path / "keyring.json"),
        clock=clock,
    )
    await services.start()
    yield services.uploads
    await services.close()
    catalog.close()


@contextlib.asynccontextmanager
async def own_service(tmp_path: Path, store: MemoryStore, **options: Any) -> AsyncIterator[Uploads]:
    """A service with settings of its own for one test (not started: no reaper)."""
    settings = Settings(**{"data_dir": tmp_path, "segment_size": S, **options})
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    services = build_services(
        settings, store=store, catalog=catalog, keys=LocalKeyring.open(tmp_path / "k.json")
    )
    try:
        yield services.uploads
    finally:
        await services.close()
        catalog.close()


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at : at + size]
        at += size
    if at < len(data):
        yield data[at:]


def read(service: Uploads, upload: Upload) -> bytes:
    reader = Reader(service.store, service.catalog, service.keys)
    return b"".join(reader.read(upload))


async def upload_in_patches(
    service: Uploads, data: bytes, sizes: Iterable[int], *, announced: bool = False
) -> Upload:
    """One PATCH per size; `announced`: each with its Content-Length, as over HTTP."""
    upload = await service.create(ME, length=len(data), metadata=None)
    offset = 0
    for piece in split(data, sizes):
        upload, _ = await service.write(
            ME,
            upload.id,
            offset=offset,
            body=body(piece),
            content_length=len(piece) if announced else None,
        )
        offset += len(piece)
    return await service.get(ME, upload.id)  # an empty upload completes on first look


@pytest.mark.parametrize(
    "size, patches",
    [
        (0, []),
        (1, [1]),
        (S, [S]),
        (S, [1, S - 1]),
        (3 * S, [S - 1, 2, S - 1]),
        (3 * S + 5, [7, S, 3, S + 10]),
        (5 * S + 123, [5 * S + 123]),
    ],
)
@pytest.mark.parametrize("announced", [False, True], ids=["chunked", "content-length"])
async def test_odd_patches_read_back_exactly(
    service: Uploads, size: int, patches: list[int], announced: bool
) -> None:
    data = os.urandom(size)
    upload = await upload_in_patches(service, data, patches, announced=announced)
    assert upload.state == COMPLETE
    assert read(service, upload) == data


async def test_tail_pieces_are_appended_never_rewritten(
    service: Uploads, store: MemoryStore
) -> None:
    data = os.urandom(S // 2)
    upload = await service.create(ME, length=S * 2, metadata=None)
    offset = 0
    seen: dict[str, bytes] = {}
    for piece in split(data, [1000, 1000, 1000]):
        await service.write(ME, upload.id, offset=offset, body=body(piece))
        offset += len(piece)
        tails = {k: v for k, v in store.objects.items() if "/tail/" in k}
        assert len(tails) == len(seen) + 1  # one new piece per PATCH
        assert all(tails[k] == v for k, v in seen.items())  # the others untouched
        seen = tails
    assert len(seen) == 4 and all(k.startswith(f"{upload.id}/tail/0/") for k in seen)
    # Finishing the segment seals it as a record and removes the pieces.
    rest = os.urandom(S * 2 - offset)
    final, _ = await service.write(ME, upload.id, offset=offset, body=body(rest))
    assert not [k for k in store.objects if "/tail/" in k]
    assert read(service, final) == data + rest


class CountingStore(InPlaceMemoryStore):
    """Counts what is written, and which tail pieces are read back."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.tail_reads = 0

    def write_span(self, key: str, multipart_id: str, offset: int, chunks: Any, **kw: Any) -> None:
        self.written += sum(len(memoryview(c)) for c in chunks)
        super().write_span(key, multipart_id, offset, chunks, **kw)

    def put(self, key: str, data: Any, *, fresh: bool = False) -> None:
        self.written += len(data)
        super().put(key, data, fresh=fresh)

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        self.tail_reads += "/tail/" in key
        return super().get(key, start, length)


async def test_short_announced_bodies_inside_a_segment_seal_only_their_own_bytes(
    tmp_path: Path,
) -> None:
    # Regression: every PATCH that ended mid-segment read the segment's earlier tail
    # pieces back and sealed them again with its own bytes, so a mobile client's small
    # chunks cost the square of the segment: 22 MB/s for 512 KiB chunks of 8 MiB.
    store = CountingStore()
    async with own_service(tmp_path, store, segment_size=16 * S) as service:
        data = os.urandom(32 * S)
        upload = await service.create(ME, length=len(data), metadata=None)
        chunk = S
        for offset in range(0, 15 * chunk, chunk):  # the first segment, but its last chunk
            await service.write(
                ME, upload.id, offset=offset, body=body(data[offset : offset + chunk]),
                content_length=chunk,
            )  # fmt: skip
        assert store.tail_reads == 0
        assert store.written < 15 * chunk + 15 * 1024  # each byte once, plus small overhead
        offset = 15 * chunk  # this one fills the segment: its pieces are read back once
        done, _ = await service.write(
            ME, upload.id, offset=offset, body=body(data[offset:]), content_length=17 * chunk
        )
        assert store.tail_reads == 15
        assert done.state == COMPLETE and read(service, done) == data


async def test_a_short_patch_makes_three_catalog_calls(service: Uploads) -> None:
    """Each call to the catalog thread costs a round trip (about 0.2 ms), a fixed cost of
    every PATCH that mobile clients' small chunks pay many times over. Regression: the
    upload was read before the lease was taken, after it was taken and after it was
    handed back (six calls); now those reads ride on the lease's own calls."""
    data = os.urandom(S)
    upload = await service.create(ME, length=len(data), metadata=None)
    calls: list[str] = []
    db = service.runner.db

    async def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", type(fn).__name__))
        return await db(fn, *args, **kwargs)

    service.runner.db = counting  # type: ignore[method-assign]
    done, _ = await service.write(
        ME, upload.id, offset=0, body=body(data[:1000]), content_length=1000
    )
    # The lease (with the checks and the state), the commit, the lease back.
    assert len(calls) == 3, calls
    assert done.offset == 1000


async def test_a_short_body_kept_whole_is_checked_against_its_checksum(
    service: Uploads, store: MemoryStore
) -> None:
    data = os.urandom(S // 2)
    upload = await service.create(ME, length=S, metadata=None)
    wrong = ChecksumHeader("sha256", hashlib.sha256(data[1:]).digest())
    with pytest.raises(GatewayError) as caught:
        await service.write(
            ME, upload.id, offset=0, body=body(data), checksum=wrong, content_length=len(data)
        )
    assert caught.value.err is ERR.CHECKSUM_MISMATCH
    assert (await service.get(ME, upload.id)).offset == 0
    assert not [k for k in store.objects if "/tail/" in k]
    right = ChecksumHeader("sha256", hashlib.sha256(data).digest())
    await service.write(
        ME, upload.id, offset=0, body=body(data), checksum=right, content_length=len(data)
    )
    rest = os.urandom(S - len(data))
    done, _ = await service.write(ME, upload.id, offset=len(data), body=body(rest))
    assert read(service, done) == data + rest


async def test_a_short_body_kept_whole_saves_what_came_when_the_client_goes(
    service: Uploads,
) -> None:
    data = os.urandom(S)

    async def gone_halfway() -> AsyncIterator[bytes]:
        yield data[:1000]
        yield data[1000 : S // 4]
        raise BodyInterrupted

    upload = await service.create(ME, length=len(data), metadata=None)
    await service.write(ME, upload.id, offset=0, body=gone_halfway(), content_length=S // 2)
    assert (await service.get(ME, upload.id)).offset == S // 4
    done, _ = await service.write(ME, upload.id, offset=S // 4, body=body(data[S // 4 :]))
    assert read(service, done) == data


async def test_a_body_is_kept_whole_only_with_room_in_the_budget_and_gives_it_back(
    tmp_path: Path,
) -> None:
    store = InPlaceMemoryStore()
    mib = 1024 * 1024
    async with own_service(
        tmp_path, store, segment_size=4 * mib, receive_budget=2 * mib
    ) as service:
        budget = service.writes.budget
        data = os.urandom(3 * mib)
        upload = await service.create(ME, length=len(data), metadata=None)
        await budget.take(mib // 2)  # another upload holds a quarter of the budget
        try:
            # 1.5 MiB would leave less than half the budget free: sealed as it arrives.
            await service.write(
                ME, upload.id, offset=0, body=body(data[: 3 * mib // 2]),
                content_length=3 * mib // 2,
            )  # fmt: skip
            assert store.spans  # streamed into the record
        finally:
            budget.give(mib // 2)
        store.spans.clear()
        await service.write(
            ME, upload.id, offset=3 * mib // 2, body=body(data[3 * mib // 2 : 2 * mib]),
            content_length=mib // 2,
        )  # fmt: skip
        assert not store.spans  # kept whole: nothing written in place
        assert budget.free == budget.total  # every byte came back
        done, _ = await service.write(
            ME, upload.id, offset=2 * mib, body=body(data[2 * mib :]), content_length=mib
        )
        assert read(service, done) == data


async def test_checksum_mismatch_records_nothing(service: Uploads) -> None:
    data = os.urandom(2 * S + 100)
    upload = await service.create(ME, length=len(data), metadata=None)
    await service.write(ME, upload.id, offset=0, body=body(data[:10]))
    wrong = ChecksumHeader("sha256", b"\0" * 32)
    with pytest.raises(GatewayError) as caught:
        await service.write(ME, upload.id, offset=10, body=body(data[10:]), checksum=wrong)
    assert caught.value.err is ERR.CHECKSUM_MISMATCH
    assert (await service.get(ME, upload.id)).offset == 10
    hasher = new_hasher("sha1")
    hasher.update(data[10:])
    right = ChecksumHeader("sha1", hasher.digest())
    done, _ = await service.write(ME, upload.id, offset=10, body=body(data[10:]), checksum=right)
    assert read(service, done) == data


async def test_store_outage_keeps_what_was_durable(service: Uploads, store: MemoryStore) -> None:
    data = os.urandom(5 * S)
    upload = await service.create(ME, length=len(data), metadata=None)
    store.fail_after = store.writes + 2  # the third part write fails
    with pytest.raises(GatewayError) as caught:
        await service.write(ME, upload.id, offset=0, body=body(*split(data, [S] * 5)))
    assert caught.value.err is ERR.STORE_UNAVAILABLE
    assert caught.value.headers["Retry-After"]
    offset = (await service.get(ME, upload.id)).offset
    assert offset == 2 * S
    store.fail_after = None
    done, _ = await service.write(ME, upload.id, offset=offset, body=body(data[offset:]))
    assert read(service, done) == data


async def test_deferred_length_ending_on_a_boundary(service: Uploads) -> None:
    data = os.urandom(2 * S)
    upload = await service.create(ME, length=None, metadata=None)
    upload, _ = await service.write(ME, upload.id, offset=0, body=body(data))
    assert upload.length is None and upload.offset == 2 * S
    done, _ = await service.write(ME, upload.id, offset=2 * S, body=body(), length=2 * S)
    assert done.state == COMPLETE
    records = service.catalog.records(upload.id)
    assert [(r.plaintext_len, r.final) for r in records] == [(S, False), (S, False), (0, True)]
    assert read(service, done) == data


async def test_offset_mismatch_and_foreign_owner(service: Uploads) -> None:
    upload = await service.create(ME, length=10, metadata=None)
    with pytest.raises(GatewayError) as caught:
        await service.write(ME, upload.id, offset=3, body=body(b"abc"))
    assert caught.value.err is ERR.MISMATCHED_OFFSET
    assert caught.value.headers["Upload-Offset"] == "0"
    for other in (Principal("bob", "t1"), Principal("alice", "t2")):
        with pytest.raises(GatewayError) as caught:
            await service.get(other, upload.id)
        assert caught.value.err is ERR.UPLOAD_NOT_FOUND


async def test_chunked_overflow_is_refused(service: Uploads) -> None:
    upload = await service.create(ME, length=100, metadata=None)
    with pytest.raises(GatewayError) as caught:
        await service.write(ME, upload.id, offset=0, body=body(b"x" * 60, b"y" * 60))
    assert caught.value.err is ERR.UPLOAD_SIZE_EXCEEDED
    assert (await service.get(ME, upload.id)).offset == 0


async def test_a_new_request_stops_a_stalled_writer(service: Uploads) -> None:
    data = os.urandom(S + 500)
    upload = await service.create(ME, length=len(data), metadata=None)
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data[: S + 100]
        stalled.set()
        await asyncio.sleep(3600)
        yield b""

    first = asyncio.create_task(service.write(ME, upload.id, offset=0, body=stalling()))
    await stalled.wait()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The retrying client does not know what the stalled request saved: it asks.
    while True:
        offset = (await service.get(ME, upload.id)).offset
        try:
            done, _ = await service.write(ME, upload.id, offset=offset, body=body(data[offset:]))
            break
        except GatewayError as exc:
            assert exc.err is ERR.MISMATCHED_OFFSET
    assert loop.time() - started < 2.0
    with pytest.raises(GatewayError) as caught:
        await first
    assert caught.value.err is ERR.UPLOAD_INTERRUPTED
    assert read(service, done) == data


async def test_writers_beyond_the_limit_wait_then_get_503(
    tmp_path: Path, store: MemoryStore, clock: Clock
) -> None:
    async with own_service(tmp_path, store, acquire_timeout=0.3, max_writers=1) as service:
        stalled = asyncio.Event()
        release = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield b"a" * 10
            stalled.set()
            await release.wait()

        first = await service.create(ME, length=100, metadata=None)
        second = await service.create(ME, length=100, metadata=None)
        running = asyncio.create_task(service.write(ME, first.id, offset=0, body=slow()))
        await stalled.wait()
        with pytest.raises(GatewayError) as caught:
            await service.write(ME, second.id, offset=0, body=body(b"b" * 10))
        assert caught.value.err is ERR.SERVER_BUSY
        assert caught.value.status == 503 and caught.value.headers["Retry-After"]
        release.set()
        await running
        # The slot is free again.
        done, _ = await service.write(ME, second.id, offset=0, body=body(b"b" * 10))
        assert done.offset == 10


async def test_final_concatenation_is_virtual(service: Uploads, store: MemoryStore) -> None:
    a, b = os.urandom(S + 3), os.urandom(17)
    parts = []
    for data in (a, b):
        part = await service.create(ME, length=len(data), metadata=None, partial_concat="partial")
        part, _ = await service.write(ME, part.id, offset=0, body=body(data))
        parts.append(part.id)
    before = set(store.objects)
    read_keys: list[str] = []
    get = store.get

    def recording_get(key: str, *args: Any, **kwargs: Any) -> bytes:
        read_keys.append(key)
        return get(key, *args, **kwargs)

    store.get = recording_get  # type: ignore[method-assign]
    final = await service.create_final(ME, concat="final;x", partial_ids=parts, metadata=None)
    store.get = get  # type: ignore[method-assign]
    # Built from the partials' signed manifests: no partial's ciphertext is read.
    assert read_keys == [f"{p}/manifest.jws" for p in parts]
    # No byte copied: the only new objects are the final's signed manifest.
    assert set(store.objects) - before == {f"{final.id}/manifest.json", f"{final.id}/manifest.jws"}
    assert final.length == len(a) + len(b)
    assert read(service, final) == a + b
    document = json.loads(store.objects[f"{final.id}/manifest.json"])
    assert document["kind"] == "concatenation"
    assert [p["id"] for p in document["parts"]] == parts
    # SHA-256 does not compose: each partial is pinned by its own signed manifest instead.
    assert document["plaintext"] == {"size": len(a) + len(b)}
    assert [p["manifest_jws_sha256"] for p in document["parts"]] == [
        hashlib.sha256(store.objects[f"{p}/manifest.jws"]).hexdigest() for p in parts
    ]
    jws = store.objects[f"{final.id}/manifest.jws"].decode()
    keys = {k.kid: k for k in service.keys.public_signing_keys()}
    assert manifest.verify(jws, keys) == document


async def test_a_final_of_unfinished_partials_completes_on_its_next_look(
    service: Uploads, store: MemoryStore
) -> None:
    # concatenation-unfinished. The request completing the last partial settles the
    # final over HTTP; if it did not get to it (a crash), the next look does.
    a, b = os.urandom(S + 3), os.urandom(17)
    part_a = await service.create(ME, length=len(a), metadata=None, partial_concat="partial")
    part_b = await service.create(ME, length=None, metadata=None, partial_concat="partial")
    await service.write(ME, part_a.id, offset=0, body=body(a[:5]))
    ids = [part_a.id, part_b.id]
    final = await service.create_final(ME, concat="final;x", partial_ids=ids, metadata=None)
    assert (final.state, final.length, final.offset) == (UploadState.ACTIVE, None, 0)
    assert not any(k.startswith(final.id) for k in store.objects)
    await service.write(ME, part_a.id, offset=5, body=body(a[5:]))
    assert (await service.get(ME, final.id)).length is None  # b's length is not known yet
    await service.write(ME, part_b.id, offset=0, body=body(b), length=len(b))
    assert service.catalog.get_upload(final.id).state == UploadState.ACTIVE  # type: ignore[union-attr]
    final = await service.get(ME, final.id)
    assert (final.state, final.length, final.offset) == (COMPLETE, len(a) + len(b), len(a) + len(b))
    assert service.catalog.get_upload(final.id) == final
    assert read(service, final) == a + b
    document = json.loads(store.objects[f"{final.id}/manifest.json"])
    assert [p["id"] for p in document["parts"]] == ids
    assert document["plaintext"] == {"size": len(a) + len(b)}


async def test_a_final_whose_partial_expired_is_gone_then_reaped(
    service: Uploads, clock: Clock
) -> None:
    part = await service.create(ME, length=10, metadata=None, partial_concat="partial")
    done = await service.create(ME, length=1, metadata=None, partial_concat="partial")
    await service.write(ME, done.id, offset=0, body=body(b"x"))
    ids = [done.id, part.id]
    final = await service.create_final(ME, concat="final;x", partial_ids=ids, metadata=None)
    clock.now += 101  # the unfinished partial expires (upload_ttl 100)
    with pytest.raises(GatewayError) as caught:
        await service.get(ME, final.id)
    assert caught.value.err is ERR.UPLOAD_GONE
    await service.reap_once()
    for upload_id in (final.id, part.id):
        assert service.catalog.get_upload(upload_id) is None
    assert (await service.get(ME, done.id)).state == COMPLETE  # another final may use it


async def test_expired_uploads_are_gone_then_reaped(
    service: Uploads, store: MemoryStore, clock: Clock
) -> None:
    upload = await service.create(ME, length=S * 2, metadata=None)
    await service.write(ME, upload.id, offset=0, body=body(os.urandom(S + 5)))
    assert any(k.startswith(upload.id) for k in store.objects)
    clock.now += 101
    with pytest.raises(GatewayError) as caught:
        await service.get(ME, upload.id)
    assert caught.value.err is ERR.UPLOAD_GONE
    assert await service.reap_once() == 1
    assert not any(k.startswith(upload.id) for k in store.objects)
    assert service.catalog.get_upload(upload.id) is None
    assert service.catalog.wrapped_key(upload.dek_id) is None


async def test_terminate_shreds_the_key(service: Uploads, store: MemoryStore) -> None:
    upload = await upload_in_patches(service, os.urandom(100), [100])
    await service.terminate(ME, upload.id)
    assert service.catalog.wrapped_key(upload.dek_id) is None
    assert not any(k.startswith(upload.id) for k in store.objects)
    with pytest.raises(GatewayError) as caught:
        await service.get(ME, upload.id)
    assert caught.value.err is ERR.UPLOAD_NOT_FOUND


async def test_a_writing_uploads_key_is_kept_until_it_completes_or_goes(
    service: Uploads,
) -> None:
    keys = service.upload_keys
    data = os.urandom(300)
    upload = await service.create(ME, length=len(data), metadata=None)
    await service.write(ME, upload.id, offset=0, body=body(data[:100]))
    assert keys.holds_key(upload.id)  # for its next PATCH
    await service.write(ME, upload.id, offset=100, body=body(data[100:]))
    assert not keys.holds_key(upload.id)  # complete: no PATCH follows
    other = await service.create(ME, length=len(data), metadata=None)
    await service.write(ME, other.id, offset=0, body=body(data[:100]))
    await service.terminate(ME, other.id)
    assert not keys.holds_key(other.id)


@contextlib.contextmanager
def catalog_reader(directory: Path) -> Iterator[None]:
    """Another connection holding a read transaction open (a backup tool, a shell)."""
    reader = sqlite3.connect(directory / "catalog.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM wrapped_keys").fetchall()
        yield
    finally:
        reader.close()


async def test_delete_answers_503_until_the_key_can_be_erased(
    service: Uploads, tmp_path: Path
) -> None:
    upload = await upload_in_patches(service, os.urandom(100), [100])
    wrapped = service.catalog.wrapped_key(upload.dek_id)
    assert wrapped is not None
    with catalog_reader(tmp_path):
        with pytest.raises(GatewayError) as caught:
            await service.terminate(ME, upload.id)
        assert caught.value.err is ERR.KEY_SHRED_PENDING
        assert caught.value.headers["Retry-After"]
        # Deleted all the same: never readable again, by anyone.
        assert service.catalog.wrapped_key(upload.dek_id) is None
        for principal in (ME, Principal("mallory", "t1")):
            with pytest.raises(GatewayError) as gone:
                await service.get(principal, upload.id)
            assert gone.value.err is ERR.UPLOAD_NOT_FOUND
        with pytest.raises(GatewayError) as other:
            await service.terminate(Principal("mallory", "t1"), upload.id)
        assert other.value.err is ERR.UPLOAD_NOT_FOUND
    await service.terminate(ME, upload.id)  # the client repeats its DELETE
    assert catalog_files_holding(tmp_path, wrapped.blob) == []
    assert service.catalog.get_upload(upload.id) is None


async def test_the_reaper_finishes_a_postponed_shredding(
    service: Uploads, tmp_path: Path, clock: Clock
) -> None:
    upload = await service.create(ME, length=S * 2, metadata=None)
    await service.write(ME, upload.id, offset=0, body=body(os.urandom(S + 5)))
    wrapped = service.catalog.wrapped_key(upload.dek_id)
    assert wrapped is not None
    clock.now += 101
    with catalog_reader(tmp_path):
        assert await service.reap_once() == 0
        assert service.catalog.wrapped_key(upload.dek_id) is None
    await service.reap_once()
    assert catalog_files_holding(tmp_path, wrapped.blob) == []
    assert service.catalog.get_upload(upload.id) is None


async def test_a_finished_upload_refuses_unannounced_bytes(service: Uploads) -> None:
    """A chunked body (no Content-Length) to a complete upload is read and refused."""
    upload = await upload_in_patches(service, b"hello", [5])
    with pytest.raises(GatewayError) as caught:
        await service.write(ME, upload.id, offset=5, body=body(b"x"))
    assert caught.value.err is ERR.UPLOAD_SIZE_EXCEEDED
    same, _ = await service.write(ME, upload.id, offset=5, body=body())
    assert same.offset == 5 and read(service, same) == b"hello"


async def test_an_empty_upload_is_complete_when_created(service: Uploads) -> None:
    upload = await service.create(ME, length=0, metadata=None)
    assert upload.state == COMPLETE
    assert read(service, upload) == b""


class OverwritingStore(InPlaceMemoryStore):
    """Reads back an unfinished part as if another writer had overwritten it since."""

    def read_span_into(self, key: str, multipart_id: str, offset: int, buffer: Buffer) -> int:
        got = super().read_span_into(key, multipart_id, offset, buffer)
        memoryview(buffer).cast("B")[got - 1] ^= 1
        return got


async def test_an_overwritten_unfinished_record_is_not_trusted(tmp_path: Path) -> None:
    # A body that ends mid-segment leaves a tail piece, whose plaintext is decrypted
    # again from the ciphertext written in place. If that ciphertext is not what this
    # request wrote, nothing is sealed from it.
    store = OverwritingStore()
    async with own_service(tmp_path, store) as service:
        data = os.urandom(S + 5000)
        upload = await service.create(ME, length=2 * S, metadata=None)
        with pytest.raises(GatewayError) as caught:
            await service.write(ME, upload.id, offset=0, body=body(data))
        assert caught.value.err is ERR.UPLOAD_INTERRUPTED
        assert (await service.get(ME, upload.id)).offset == S  # the whole record stands
        assert not [k for k in store.objects if "/tail/" in k]


async def test_uploads_share_the_receive_budget(tmp_path: Path) -> None:
    # With room for a single 1 MiB slice of received plaintext in the whole service,
    # concurrent uploads in odd chunks still all finish, each with its own bytes.
    store = MemoryStore()
    async with own_service(tmp_path, store, receive_budget=1024 * 1024) as service:

        async def trickle(data: bytes) -> AsyncIterator[bytes]:
            for piece in split(data, [7000, 50_000, 100_000, 1, 3 * S] * 4):
                await asyncio.sleep(0)  # let the others in between
                yield piece

        async def one(data: bytes) -> Upload:
            upload = await service.create(ME, length=len(data), metadata=None)
            done, _ = await service.write(ME, upload.id, offset=0, body=trickle(data))
            return done

        blobs = [os.urandom(5 * S + n) for n in (0, 1, 12345)]
        uploads = await asyncio.wait_for(asyncio.gather(*(one(b) for b in blobs)), 30)
        for upload, data in zip(uploads, blobs, strict=True):
            assert upload.state == COMPLETE
            assert read(service, upload) == data


async def test_a_failed_seal_gives_back_its_share_of_the_receive_budget(
    tmp_path: Path,
) -> None:
    # Regression: slices still queued when sealing failed were never given back, so
    # each failure shrank the shared budget until every upload waited forever.
    store = InPlaceMemoryStore()
    async with own_service(tmp_path, store, receive_budget=2 * 1024 * 1024) as service:
        for _ in range(4):  # more failures than the budget has slices
            upload = await service.create(ME, length=40 * S, metadata=None)
            store.spans_fail_after = store.span_writes + 3
            with pytest.raises(GatewayError) as caught:
                data = os.urandom(40 * S)
                await asyncio.wait_for(
                    service.write(ME, upload.id, offset=0, body=body(*split(data, [S // 3] * 120))),
                    10,
                )
            assert caught.value.err is ERR.STORE_UNAVAILABLE
        store.spans_fail_after = None
        data = os.urandom(40 * S)
        upload = await service.create(ME, length=len(data), metadata=None)
        done, _ = await asyncio.wait_for(
            service.write(ME, upload.id, offset=0, body=body(*split(data, [S // 3] * 120))), 10
        )
        assert done.state == COMPLETE and read(service, done) == data


async def test_a_failed_seal_waits_for_the_plaintext_hash_before_reusing_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: when sealing a slice failed, the slice went back to the shared pool
    # (for another upload to fill) while the thread hashing its plaintext still read it.
    hashing = threading.Event()
    reused_while_hashing: list[bool] = []
    give = ReceiveBudget.give

    def watched_give(budget: ReceiveBudget, n: int) -> None:  # slices go back through it
        reused_while_hashing.append(hashing.is_set())
        give(budget, n)

    monkeypatch.setattr(ReceiveBudget, "give", watched_give)
    store = InPlaceMemoryStore()
    async with own_service(tmp_path, store) as service:
        seal_soon = service.runner.seal_soon

        def slow_plain_hash(fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
            if getattr(fn, "__func__", None) is not SealingPipeline.hash_plain:
                return seal_soon(fn, *args)

            def slowly(*args: Any) -> None:
                hashing.set()
                time.sleep(0.3)
                fn(*args)
                hashing.clear()

            return seal_soon(slowly, *args)

        service.runner.seal_soon = slow_plain_hash  # type: ignore[method-assign,assignment]
        upload = await service.create(ME, length=4 * S, metadata=None)
        store.spans_fail_after = 1  # the record's nonce is written, its first slice fails
        with pytest.raises(GatewayError) as caught:
            await service.write(ME, upload.id, offset=0, body=body(os.urandom(4 * S)))
        assert caught.value.err is ERR.STORE_UNAVAILABLE
    assert reused_while_hashing and not any(reused_while_hashing)


async def test_the_client_checksum_survives_a_completion_cut_short(
    service: Uploads, store: MemoryStore
) -> None:
    """The checksum of a body that carried the whole upload is recorded (sealed) with the
    body, so a completion redone later (here: the manifest write failed) still has it."""
    data = os.urandom(S + 5)
    upload = await service.create(ME, length=len(data), metadata=None)
    checksum = ChecksumHeader("sha1", hashlib.sha1(data).digest())
    put = store.put

    def failing_put(key: str, data: Buffer, *, fresh: bool = False) -> None:
        if key.endswith("/manifest.jws"):
            raise StoreUnavailable("injected failure")
        put(key, data, fresh=fresh)

    store.put = failing_put  # type: ignore[method-assign]
    with pytest.raises(GatewayError):
        await service.write(ME, upload.id, offset=0, body=body(data), checksum=checksum)
    store.put = put  # type: ignore[method-assign]
    recorded = service.catalog.get_upload(upload.id)
    assert recorded is not None and recorded.state != COMPLETE and recorded.checksum
    assert b"sha1" not in recorded.checksum  # sealed, not readable
    done = await service.get(ME, upload.id)  # finishes the completion
    assert done.state == COMPLETE
    reader = json.loads(manifest.payload(await service.signed_manifest(done)))
    assert reader["upload"]["client_checksum"] == "sha1 " + base64.b64encode(
        hashlib.sha1(data).digest()
    ).decode("ascii")
    assert reader["plaintext"]["sha256"] == hashlib.sha256(data).hexdigest()
    stored = json.loads(store.objects[f"{upload.id}/manifest.json"])
    assert stored == manifest.stored_view(reader)


async def test_a_stalled_body_gives_its_partly_filled_slice_back_to_the_budget(
    tmp_path: Path,
) -> None:
    store = InPlaceMemoryStore()
    async with own_service(tmp_path, store, segment_size=4 * 1024 * 1024) as service:
        budget = service.writes.budget
        stalled, release = asyncio.Event(), asyncio.Event()
        data = os.urandom(3 * 1024 * 1024)

        async def stalls() -> AsyncIterator[bytes]:
            yield data[:40_000]  # part of a slice
            stalled.set()
            await release.wait()
            yield data[40_000:]

        upload = await service.create(ME, length=len(data), metadata=None)
        writing = asyncio.create_task(service.write(ME, upload.id, offset=0, body=stalls()))
        await stalled.wait()
        assert budget.free < budget.total  # the slice being filled
        for _ in range(40):
            await asyncio.sleep(0.05)
            if budget.free == budget.total:
                break
        assert budget.free == budget.total  # handed to sealing while the read waits
        release.set()
        done, _ = await writing
        assert read(service, done) == data


class DirectBody:
    """A body read as the server's BodyReader serves one (BODY_INTO): into the writer's
    buffers, at most `most` bytes a read. After `quiet_at` bytes it goes quiet until
    `release` is set; a `read_into` withdrawn meanwhile returns WITHDRAWN."""

    def __init__(self, data: bytes, *, most: int = 256 * 1024, quiet_at: int = -1) -> None:
        self.data, self.at, self.most, self.quiet_at = data, 0, most, quiet_at
        self.quiet, self.release = asyncio.Event(), asyncio.Event()
        self.reads: list[tuple[str, int]] = []  # ("into", room) or ("own", most) per read
        self.withdrawn = 0
        self._waiting: asyncio.Future[int] | None = None

    async def read_into(self, view: memoryview) -> int:
        if await self._quiet(withdrawable=True):
            self.withdrawn += 1
            return WITHDRAWN
        n = self._next(len(view))
        view[:n] = self.data[self.at - n : self.at]
        self.reads.append(("into", len(view)))
        return n

    async def read(self, most: int) -> memoryview:
        await self._quiet(withdrawable=False)
        n = self._next(most)
        self.reads.append(("own", most))
        return memoryview(self.data[self.at - n : self.at])

    def withdraw(self) -> bool:
        if self._waiting is None or self._waiting.done():
            return False
        self._waiting.set_result(WITHDRAWN)
        return True

    async def _quiet(self, *, withdrawable: bool) -> bool:
        """Wait while quiet; whether the wait was withdrawn."""
        if self.at != self.quiet_at or self.release.is_set():
            return False
        self.quiet.set()
        waiting = asyncio.get_running_loop().create_future()
        if withdrawable:
            self._waiting = waiting
        released = asyncio.ensure_future(self.release.wait())
        await asyncio.wait({waiting, released}, return_when=asyncio.FIRST_COMPLETED)
        released.cancel()
        self._waiting = None
        return waiting.done()

    def _next(self, room: int) -> int:
        end = self.quiet_at if self.at < self.quiet_at else len(self.data)
        n = min(room, self.most, end - self.at)
        self.at += n
        return n


async def no_chunks() -> AsyncIterator[bytes]:
    raise AssertionError("a direct body is read directly, not as chunks")
    yield b""  # pragma: no cover


async def test_direct_bodies_are_read_into_the_writers_buffers(service: Uploads) -> None:
    """A body that starts and ends inside segments, then a short one kept whole, then
    one that ends the upload: every read goes into a slice or the kept buffer."""
    data = os.urandom(9 * S + 1234)
    upload = await service.create(ME, length=len(data), metadata=None)
    cuts = [0, 3 * S + 77, 3 * S + 1077, len(data)]
    for start, end in itertools.pairwise(cuts):
        direct = DirectBody(data[start:end])
        await service.write(
            ME, upload.id, offset=start, body=Body(no_chunks(), direct), content_length=end - start
        )
        assert direct.at == end - start
        assert {kind for kind, _ in direct.reads} == {"into"}
        assert max(room for _, room in direct.reads) <= SLICE
    done = await service.get(ME, upload.id)
    assert done.state == COMPLETE and read(service, done) == data


async def test_a_quiet_direct_body_holds_no_slice_while_its_client_is_silent(
    tmp_path: Path,
) -> None:
    store = InPlaceMemoryStore()
    async with own_service(tmp_path, store, segment_size=1024 * 1024) as service:
        budget = service.writes.budget
        data = os.urandom(3 * 1024 * 1024 + 5)  # not kept whole: it ends past its segment
        direct = DirectBody(data, quiet_at=40_000)
        upload = await service.create(ME, length=len(data), metadata=None)
        body = Body(no_chunks(), direct)
        writing = asyncio.create_task(
            service.write(ME, upload.id, offset=0, body=body, content_length=len(data))
        )
        await direct.quiet.wait()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if budget.free == budget.total:
                break
        assert direct.withdrawn >= 1
        assert budget.free == budget.total  # its slice went to sealing; it waits in its own
        before = len(direct.reads)
        direct.release.set()
        done, _ = await writing
        assert read(service, done) == data
        # The read after the quiet spell waited in a buffer of its own; the next ones
        # went into slices again.
        assert direct.reads[before] == ("own", QUIET_READ)
        assert ("into", SLICE) in direct.reads[before + 1 :]


async def test_tail_bytes_read_back_are_counted_in_the_receive_budget(tmp_path: Path) -> None:
    # The body that fills a segment reads the segment's earlier bytes back from its tail
    # pieces; until they are sealed they are plaintext in memory like received bytes, so
    # they wait for and hold their share of the budget (hundreds of slow bodies would
    # otherwise each hold up to a segment of it, uncounted).
    store = InPlaceMemoryStore()
    mib = 1024 * 1024
    async with own_service(tmp_path, store, segment_size=4 * mib) as service:
        budget = service.writes.budget
        data = os.urandom(4 * mib)
        upload = await service.create(ME, length=len(data), metadata=None)
        await service.write(ME, upload.id, offset=0, body=body(data[:mib]), content_length=mib)
        await service.write(ME, upload.id, offset=mib, body=body(data[mib : 2 * mib]))
        started, release = asyncio.Event(), asyncio.Event()

        async def waits() -> AsyncIterator[bytes]:
            started.set()
            await release.wait()
            yield data[2 * mib :]

        writing = asyncio.create_task(
            service.write(ME, upload.id, offset=2 * mib, body=waits(), content_length=2 * mib)
        )
        await started.wait()
        assert budget.free == budget.total - 2 * mib  # the two pieces read back
        release.set()
        done, _ = await writing
        assert budget.free == budget.total
        assert read(service, done) == data


async def test_tail_bytes_read_back_for_a_body_that_never_comes_go_back_to_the_budget(
    tmp_path: Path,
) -> None:
    store = InPlaceMemoryStore()
    mib = 1024 * 1024
    async with own_service(tmp_path, store, segment_size=4 * mib) as service:
        budget = service.writes.budget
        data = os.urandom(4 * mib)
        upload = await service.create(ME, length=len(data), metadata=None)
        await service.write(ME, upload.id, offset=0, body=body(data[:mib]), content_length=mib)

        async def cut() -> AsyncIterator[bytes]:
            raise BodyInterrupted
            yield b""  # pragma: no cover - makes this an async generator

        with contextlib.suppress(GatewayError):
            await service.write(ME, upload.id, offset=mib, body=cut(), content_length=3 * mib)
        assert budget.free == budget.total
        done, _ = await service.write(ME, upload.id, offset=mib, body=body(data[mib:]))
        assert read(service, done) == data


async def test_a_body_near_its_end_is_answered_first(tmp_path: Path) -> None:
    # Until what is left of the body could be waiting in buffers, sent, its sealing
    # queues behind the answers others wait for; then its client waits, and it goes
    # first (through to storing and recording what is left).
    store = InPlaceMemoryStore()
    size = 2 * NEAR_END
    data = os.urandom(size)
    given = 0

    async def counted(chunks: list[bytes]) -> AsyncIterator[bytes]:
        nonlocal given
        for chunk in chunks:
            given += len(chunk)
            yield chunk

    async with own_service(tmp_path, store) as service:
        seal_soon = service.runner.seal_soon
        seen: list[tuple[bool, int]] = []

        def watched(fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
            seen.append((answering(), given))
            return seal_soon(fn, *args)

        service.runner.seal_soon = watched  # type: ignore[method-assign,assignment]
        upload = await service.create(ME, length=size + S, metadata=None)
        chunks = [data[i : i + S // 4] for i in range(0, size, S // 4)]
        await service.write(ME, upload.id, offset=0, body=counted(chunks), content_length=size)
    first = [at for answered, at in seen if answered]
    assert not seen[0][0] and first and seen[-1][0]
    assert [answered for answered, _ in seen] == sorted(answered for answered, _ in seen)
    assert size - NEAR_END <= first[0] < size  # before the body's end was read
