"""What every ObjectStore promises (gateway/store/base.py), checked on each implementation.

The core contract runs on the in-memory fake, the folder store and the S3 store (on the
session's SeaweedFS); the in-place capability (`write_span`, `finish_part`, `read_span_into`,
`discard_from`, all fenced) on the stores that have it. S3 wants every part but the last
to be at least 5 MiB, so multipart tests use one 5 MiB first part and small parts after it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.store.base import (
    InPlaceStore,
    ObjectNotFound,
    ObjectStore,
    PartRef,
    StaleWrite,
    StoreUnavailable,
)
from gateway.store.folder import FolderStore
from gateway.store.s3 import S3Settings, S3Store
from gateway.types import Buffer
from tests.fakes import InPlaceMemoryStore, MemoryStore, read_span

if TYPE_CHECKING:
    from tests.s3server import SeaweedS3

MiB = 1 << 20
FIRST = os.urandom(5 * MiB)  # the smallest part S3 takes before the last one


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@contextmanager
def open_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if kind == "memory":
        yield MemoryStore()
    elif kind == "folder":
        yield FolderStore(tmp_path / "objects")
    else:
        s3: SeaweedS3 = request.getfixturevalue("s3_server")
        s3_store = S3Store(
            S3Settings(
                endpoint=s3.endpoint,
                bucket=s3.fresh_bucket("c"),
                access_key=s3.access_key,
                secret_key=s3.secret_key,
                retry_seconds=1.0,
            )
        )
        try:
            yield s3_store
        finally:
            s3_store.close()


@pytest.fixture(params=["memory", "folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    with open_store(request.param, request, tmp_path) as store:
        yield store


@pytest.fixture(params=["memory", "s3"])
def etag_checking(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """The stores that check recorded ETags at completion; the folder store fences
    stale writers instead (TestInPlaceStore)."""
    with open_store(request.param, request, tmp_path) as store:
        yield store


def put_parts(store: ObjectStore, key: str, mid: str, parts: list[bytes]) -> list[PartRef]:
    """Store `parts` last first (parts may arrive in any order); refs in part order."""
    refs = []
    for number in reversed(range(1, len(parts) + 1)):
        data = parts[number - 1]
        offset = sum(len(p) for p in parts[: number - 1])
        chunks: list[Buffer] = [data[:100], memoryview(data)[100:]] if number == 1 else [data]
        etag = store.put_part(key, mid, number, offset, chunks, sha(data))
        refs.append(PartRef(number, offset, len(data), etag))
    return sorted(refs, key=lambda r: r.number)


class TestObjectStore:
    def test_multipart_assembles_the_parts_in_order(self, store: ObjectStore) -> None:
        parts = [FIRST, FIRST[::-1], b"third"]
        mid = store.start_multipart("U/data")
        refs = put_parts(store, "U/data", mid, parts)
        with pytest.raises(ObjectNotFound):  # nothing to read before completion
            store.get("U/data")
        store.complete_multipart("U/data", mid, refs)
        assert store.size("U/data") == 2 * len(FIRST) + 5
        assert store.get("U/data") == b"".join(parts)

    def test_a_single_part_is_a_whole_object(self, store: ObjectStore) -> None:
        mid = store.start_multipart("U/data")
        refs = put_parts(store, "U/data", mid, [b"only part"])
        store.complete_multipart("U/data", mid, refs)
        assert store.get("U/data") == b"only part"

    def test_writing_a_part_again_replaces_it(self, store: ObjectStore) -> None:
        mid = store.start_multipart("U/data")
        put_parts(store, "U/data", mid, [FIRST, b"old tail"])
        refs = put_parts(store, "U/data", mid, [FIRST, b"new tail"])
        store.complete_multipart("U/data", mid, refs)
        assert store.get("U/data", len(FIRST)) == b"new tail"

    def test_completion_with_a_wrong_etag_fails(self, etag_checking: ObjectStore) -> None:
        store = etag_checking
        mid = store.start_multipart("U/data")
        refs = put_parts(store, "U/data", mid, [FIRST, b"tail"])
        wrong = PartRef(2, refs[1].offset, refs[1].size, sha(b"other").hex())
        with pytest.raises(StoreUnavailable):
            store.complete_multipart("U/data", mid, [refs[0], wrong])

    def test_completion_with_parts_that_do_not_follow_fails(self, store: ObjectStore) -> None:
        mid = store.start_multipart("U/data")
        first, second = put_parts(store, "U/data", mid, [FIRST, b"tail"])
        gap = PartRef(2, second.offset + 1, second.size, second.etag)
        with pytest.raises(StoreUnavailable):
            store.complete_multipart("U/data", mid, [first, gap])

    def test_abort_drops_the_upload(self, store: ObjectStore) -> None:
        mid = store.start_multipart("U/data")
        put_parts(store, "U/data", mid, [b"part"])
        store.abort_multipart("U/data", mid)
        store.abort_multipart("U/data", mid)  # twice is fine
        with pytest.raises(ObjectNotFound):
            store.get("U/data")
        with pytest.raises(StoreUnavailable):
            store.put_part("U/data", mid, 1, 0, [b"late"], sha(b"late"))

    def test_put_get_ranges_and_size(self, store: ObjectStore) -> None:
        store.put("U/tail/0/0", b"0123456789", fresh=True)
        assert store.get("U/tail/0/0") == b"0123456789"
        assert store.get("U/tail/0/0", 3, 4) == b"3456"
        assert store.get("U/tail/0/0", 7) == b"789"
        assert store.get("U/tail/0/0", 8, 100) == b"89"  # short at the end
        assert store.get("U/tail/0/0", 10) == b""  # at the end, like a file
        assert store.get("U/tail/0/0", 2, 0) == b""
        assert store.size("U/tail/0/0") == 10
        store.put("U/tail/0/0", memoryview(bytearray(b"new")))  # replaced; any buffer
        assert store.get("U/tail/0/0") == b"new"
        store.put("U/empty", b"")
        assert (store.get("U/empty"), store.size("U/empty")) == (b"", 0)

    def test_a_missing_key_is_object_not_found(self, store: ObjectStore) -> None:
        for read in (
            lambda: store.get("U/missing"),
            lambda: store.get("U/missing", 2, 3),
            lambda: store.get("U/missing", 2, 0),
            lambda: store.size("U/missing"),
        ):
            with pytest.raises(ObjectNotFound):
                read()

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put("U/manifest.json", b"{}")
        store.delete("U/manifest.json")
        store.delete("U/manifest.json")
        store.delete("U/never")
        with pytest.raises(ObjectNotFound):
            store.get("U/manifest.json")

    def test_delete_prefix_takes_one_folder(self, store: ObjectStore) -> None:
        for key in ("U/tail/0/0", "U/tail/1/0", "U/manifest.json", "V/data"):
            store.put(key, key.encode())
        store.delete_prefix("U")
        store.delete_prefix("U")  # again is fine
        for gone in ("U/tail/0/0", "U/tail/1/0", "U/manifest.json"):
            with pytest.raises(ObjectNotFound):
                store.get(gone)
        assert store.get("V/data") == b"V/data"

    def test_delete_prefix_spares_a_longer_name(self, store: ObjectStore) -> None:
        store.put("UV/data", b"another upload")
        store.delete_prefix("U")
        assert store.get("UV/data") == b"another upload"

    def test_delete_prefix_drops_unfinished_uploads(self, store: ObjectStore) -> None:
        mid = store.start_multipart("U/data")
        put_parts(store, "U/data", mid, [b"part"])
        store.delete_prefix("U")
        with pytest.raises(StoreUnavailable):
            store.put_part("U/data", mid, 1, 0, [b"late"], sha(b"late"))

    def test_check_passes_on_a_usable_store(self, store: ObjectStore) -> None:
        store.check()


@pytest.fixture(params=["memory", "folder"])
def in_place(request: pytest.FixtureRequest, tmp_path: Path) -> InPlaceStore:
    if request.param == "memory":
        return InPlaceMemoryStore()
    return FolderStore(tmp_path / "objects")


class TestInPlaceStore:
    def test_spans_land_at_their_offsets(self, in_place: InPlaceStore) -> None:
        mid = in_place.start_multipart("U/data")
        in_place.write_span("U/data", mid, 6, [b"world"])
        in_place.write_span("U/data", mid, 0, [b"hel", memoryview(b"lo ")])
        assert read_span(in_place, "U/data", mid, 0, 11) == b"hello world"
        assert read_span(in_place, "U/data", mid, 6, 100) == b"world"  # short at the end
        in_place.write_span("U/data", mid, 0, [b"HELLO"])  # written again: replaced
        assert read_span(in_place, "U/data", mid, 0, 11) == b"HELLO world"

    def test_discard_from_drops_the_rest(self, in_place: InPlaceStore) -> None:
        mid = in_place.start_multipart("U/data")
        in_place.write_span("U/data", mid, 0, [b"kept|dropped"])
        in_place.discard_from("U/data", mid, 4)
        assert read_span(in_place, "U/data", mid, 0, 100) == b"kept"
        in_place.discard_from("U/data", mid, 10)  # past the end: nothing to do
        assert read_span(in_place, "U/data", mid, 0, 100) == b"kept"

    def test_an_older_fence_is_refused(self, in_place: InPlaceStore) -> None:
        mid = in_place.start_multipart("U/data")
        in_place.write_span("U/data", mid, 0, [b"newer"], fence=2)
        with pytest.raises(StaleWrite):
            in_place.write_span("U/data", mid, 0, [b"older"], fence=1)
        with pytest.raises(StaleWrite):
            in_place.discard_from("U/data", mid, 0, fence=1)
        in_place.write_span("U/data", mid, 5, [b"!"], fence=2)  # the same fence goes on
        assert read_span(in_place, "U/data", mid, 0, 100) == b"newer!"

    def test_a_whole_part_is_finished_in_one_call(self, in_place: InPlaceStore) -> None:
        parts = [b"first part", b"second"]
        mid = in_place.start_multipart("U/data")
        refs: list[PartRef] = []
        for number, offset, data in ((2, 10, parts[1]), (1, 0, parts[0])):  # any order
            chunks: list[Buffer] = [data[:3], memoryview(data)[3:]]
            etag = in_place.finish_part(
                "U/data", mid, number, offset, chunks, sha(data), fence=1, written=0
            )
            refs.insert(0, PartRef(number, offset, len(data), etag))
        assert read_span(in_place, "U/data", mid, 0, 100) == b"first partsecond"
        in_place.complete_multipart("U/data", mid, refs)
        assert in_place.get("U/data") == b"first partsecond"

    def test_a_part_is_finished_after_its_spans(self, in_place: InPlaceStore) -> None:
        head, record = b"HEAD", b"nonce|ciphertext|tag"
        mid = in_place.start_multipart("U/data")
        first = in_place.finish_part("U/data", mid, 1, 0, [head], sha(head), fence=1, written=0)
        # Part 2 streamed out as sealed, then finished with its last bytes.
        in_place.write_span("U/data", mid, 4, [record[:6]], fence=1)
        in_place.write_span("U/data", mid, 10, [record[6:17]], fence=1)
        second = in_place.finish_part(
            "U/data", mid, 2, 4, [record[17:]], sha(record), fence=1, written=17
        )
        refs = [PartRef(1, 0, 4, first), PartRef(2, 4, len(record), second)]
        in_place.complete_multipart("U/data", mid, refs)
        assert in_place.get("U/data") == head + record
        assert in_place.size("U/data") == 4 + len(record)

    def test_an_older_fence_cannot_finish_a_part(self, in_place: InPlaceStore) -> None:
        """What keeps a writer that lost its lease from replacing a recorded part: the
        stores that write in place fence writers, where the others check ETags."""
        mid = in_place.start_multipart("U/data")
        etag = in_place.finish_part(
            "U/data", mid, 1, 0, [b"newer"], sha(b"newer"), fence=2, written=0
        )
        with pytest.raises(StaleWrite):
            in_place.finish_part("U/data", mid, 1, 0, [b"older"], sha(b"older"), fence=1, written=0)
        in_place.write_span("U/data", mid, 0, [b"ne"], fence=3)  # a newer writer goes on
        with pytest.raises(StaleWrite):
            in_place.finish_part("U/data", mid, 1, 0, [b"wer"], sha(b"newer"), fence=2, written=2)
        in_place.complete_multipart("U/data", mid, [PartRef(1, 0, 5, etag)])
        assert in_place.get("U/data") == b"newer"
