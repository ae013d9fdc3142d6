"""The folder store: DESIGN.md's layout on disk, parts in place, checked completion."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway import files
from gateway.store import writeback
from gateway.store.base import ObjectNotFound, PartRef, StaleWrite, StoreUnavailable
from gateway.store.folder import FolderStore
from tests.fakes import read_span


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "objects")


def test_put_get_ranges_and_delete(store: FolderStore) -> None:
    store.put("U/tail/0/0", b"0123456789")
    assert store.get("U/tail/0/0") == b"0123456789"
    assert store.get("U/tail/0/0", 3, 4) == b"3456"
    assert store.size("U/tail/0/0") == 10
    store.put("U/tail/0/0", b"new")  # replaced atomically
    assert store.get("U/tail/0/0") == b"new"
    assert [p.name for p in (store.root / "U" / "tail" / "0").iterdir()] == ["0"]
    store.delete("U/tail/0/0")
    store.delete("U/tail/0/0")  # missing is fine
    with pytest.raises(ObjectNotFound):
        store.get("U/tail/0/0")


def test_an_object_is_read_into_a_buffer(store: FolderStore) -> None:
    store.put("U/tail/0/1", b"0123456789", fresh=True)
    room = bytearray(b"x" * 12)
    assert store.get_into("U/tail/0/1", room) == 10 and room == b"0123456789xx"
    short = bytearray(4)
    assert store.get_into("U/tail/0/1", short) == 4 and short == b"0123"
    with pytest.raises(ObjectNotFound):
        store.get_into("U/tail/0/2", room)


def test_a_range_of_an_object_is_read_into_a_buffer(store: FolderStore) -> None:
    store.put("U/data", b"0123456789", fresh=True)
    room = bytearray(b"x" * 6)
    assert store.get_range_into("U/data", 3, memoryview(room)[:4]) == 4 and room == b"3456xx"
    assert store.get_range_into("U/data", 7, room) == 3 and room == b"7896xx"  # to its end
    assert store.get_range_into("U/data", 10, room) == 0  # from its end on: nothing
    assert store.get_range_into("U/data", 99, room) == 0
    with pytest.raises(ObjectNotFound):
        store.get_range_into("U/other", 0, room)
    with pytest.raises(ValueError):
        store.get_range_into("U/data", -1, room)


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "U/../../x", "U//data", "U/./data"])
def test_keys_cannot_leave_the_root(store: FolderStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


def write_parts(store: FolderStore, key: str, mid: str, parts: list[bytes]) -> list[PartRef]:
    refs = []
    # Parts arrive out of order and land at their offsets.
    for number in reversed(range(1, len(parts) + 1)):
        data = parts[number - 1]
        start = sum(len(p) for p in parts[: number - 1])
        etag = store.put_part(key, mid, number, start, [data[:5], data[5:]], sha(data))
        refs.append(PartRef(number, start, len(data), etag))
    return sorted(refs, key=lambda r: r.number)


def test_multipart_assembles_in_place(store: FolderStore) -> None:
    parts = [os.urandom(1000), os.urandom(1000), os.urandom(10)]
    mid = store.start_multipart("U/data")
    refs = write_parts(store, "U/data", mid, parts)
    with pytest.raises(ObjectNotFound):
        store.get("U/data")  # invisible until completed
    store.complete_multipart("U/data", mid, refs)
    assert store.get("U/data") == b"".join(parts)
    store.complete_multipart("U/data", mid, refs)  # completing again is harmless


def test_a_stale_writer_is_refused_at_write_time(store: FolderStore) -> None:
    parts = [os.urandom(1000), os.urandom(1000)]
    mid = store.start_multipart("U/data")
    # The writer holding lease token 7 writes both parts ...
    refs = []
    for number, data in enumerate(parts, 1):
        offset = (number - 1) * 1000
        etag = store.finish_part(
            "U/data", mid, number, offset, [data], sha(data), fence=7, written=0
        )
        refs.append(PartRef(number, offset, 1000, etag))
    # ... and one that lost its lease (token 6) wakes up and tries to overwrite part 2.
    stale = os.urandom(1000)
    with pytest.raises(StaleWrite):
        store.finish_part("U/data", mid, 2, 1000, [stale], sha(stale), fence=6, written=0)
    store.complete_multipart("U/data", mid, refs)
    assert store.get("U/data") == b"".join(parts)
    assert not list((store.root / "U" / ".multipart").iterdir())  # no fence file left


def test_a_part_written_in_spans(store: FolderStore) -> None:
    first, second = os.urandom(1000), os.urandom(3000)
    mid = store.start_multipart("U/data")
    ref1 = PartRef(1, 0, 1000, store.put_part("U/data", mid, 1, 0, [first], sha(first)))
    # Part 2 arrives in spans as it is sealed; finish_part adds its last bytes.
    store.write_span("U/data", mid, 1000, [second[:100], second[100:1700]], fence=3)
    assert read_span(store, "U/data", mid, 1000, 1700) == second[:1700]
    assert read_span(store, "U/data", mid, 2000, 5000) == second[1000:1700]  # short at the end
    etag = store.finish_part(
        "U/data", mid, 2, 1000, [second[1700:]], sha(second), fence=3, written=1700
    )
    store.complete_multipart("U/data", mid, [ref1, PartRef(2, 1000, 3000, etag)])
    assert store.get("U/data") == first + second


def test_spans_start_their_writeback_and_parts_are_made_durable(
    store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    synced: list[int] = []
    monkeypatch.setattr(writeback, "start", lambda fd, at, n: started.append((at, n)))
    monkeypatch.setattr(os, "fdatasync", synced.append)
    mid = store.start_multipart("U/data")
    store.write_span("U/data", mid, 5000, [b"a" * 100, memoryview(b"b" * 300)])
    store.write_span("U/data", mid, 5400, [b"c" * 50])
    assert started == [(5000, 400), (5400, 50)] and not synced
    store.finish_part("U/data", mid, 1, 5000, [b"tag"], sha(b"whole"), fence=0, written=450)
    assert started == [(5000, 400), (5400, 50)] and len(synced) == 1


def test_a_fresh_object_is_written_in_place_and_made_durable(
    store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tail piece's file and its directory entry: one journal commit, not a temporary
    file and a rename (a second one)."""
    store.put("U/tail/0/7", b"seed")  # makes the directories
    synced: list[int | Path] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    monkeypatch.setattr(files, "fsync_dir", synced.append)

    def no_rename(*args: object) -> None:
        raise AssertionError("a fresh object is not renamed into place")

    monkeypatch.setattr(os, "replace", no_rename)
    junk = store.root / "U/tail/0/5"
    junk.write_bytes(b"x" * 1000)  # left half written by a writer that crashed
    store.put("U/tail/0/5", b"piece", fresh=True)
    assert store.get("U/tail/0/5") == b"piece"  # started over, not written over
    assert len(synced) == 2 and synced[1] == store.root / "U/tail/0"
    assert sorted(p.name for p in junk.parent.iterdir()) == ["5", "7"]


def test_directories_made_for_an_object_are_made_durable(
    store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    fsync_dir = files.fsync_dir

    def record(path: Path) -> None:
        synced.append(path)
        fsync_dir(path)

    monkeypatch.setattr(files, "fsync_dir", record)
    store.put("U/tail/0/0", b"piece")
    root = store.root
    # Each new directory in its parent, then the object in its own.
    assert synced == [root, root / "U", root / "U/tail", root / "U/tail/0"]
    synced.clear()
    store.put("U/tail/0/1", b"piece")
    assert synced == [root / "U/tail/0"]  # nothing new to make durable but the entry
    synced.clear()
    store.start_multipart("V/data")
    assert synced == [root, root / "V", root / "V/.multipart"]


def test_a_stale_writer_is_refused_a_span(store: FolderStore) -> None:
    mid = store.start_multipart("U/data")
    store.write_span("U/data", mid, 0, [b"new"], fence=8)
    with pytest.raises(StaleWrite):
        store.write_span("U/data", mid, 0, [b"old"], fence=7)
    assert read_span(store, "U/data", mid, 0, 3) == b"new"
    store.abort_multipart("U/data", mid)
    with pytest.raises(StoreUnavailable):
        store.write_span("U/data", mid, 0, [b"late"], fence=9)


def test_completion_drops_unrecorded_parts_beyond_the_end(store: FolderStore) -> None:
    data = os.urandom(1000)
    mid = store.start_multipart("U/data")
    ref = PartRef(1, 0, 1000, store.put_part("U/data", mid, 1, 0, [data], sha(data)))
    orphan = os.urandom(500)  # written by a writer that never recorded it
    store.put_part("U/data", mid, 2, 1000, [orphan], sha(orphan))
    store.complete_multipart("U/data", mid, [ref])
    assert store.get("U/data") == data


def test_discard_from_drops_unrecorded_parts_fenced(store: FolderStore) -> None:
    """A refused body's parts are cut off the unfinished object; a writer that lost
    its lease cannot cut a newer writer's parts."""
    recorded, refused = os.urandom(1000), os.urandom(700)
    mid = store.start_multipart("U/data")
    ref = PartRef(1, 0, 1000, store.put_part("U/data", mid, 1, 0, [recorded], sha(recorded)))
    store.finish_part("U/data", mid, 2, 1000, [refused], sha(refused), fence=5, written=0)
    with pytest.raises(StaleWrite):
        store.discard_from("U/data", mid, 1000, fence=4)
    assert read_span(store, "U/data", mid, 1000, 700) == refused
    store.discard_from("U/data", mid, 1000, fence=5)
    assert read_span(store, "U/data", mid, 1000, 700) == b""
    store.discard_from("U/data", mid, 5000, fence=5)  # nothing there: nothing to do
    assert read_span(store, "U/data", mid, 0, 2000) == recorded
    store.complete_multipart("U/data", mid, [ref])
    assert store.get("U/data") == recorded


def test_abort_and_delete_prefix(store: FolderStore) -> None:
    mid = store.start_multipart("U/data")
    store.put_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"))
    store.put("U/tail/3/1", b"x")
    store.abort_multipart("U/data", mid)
    store.delete_prefix("U/")
    assert not (store.root / "U").exists()
    store.delete_prefix("U/")  # twice is fine


def test_check_reports_a_missing_root(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    store.check()
    store.root.rmdir()
    with pytest.raises(StoreUnavailable):
        store.check()


def test_every_folder_and_file_is_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # left by an older version
    old_umask = os.umask(0o022)
    try:
        store = FolderStore(root)
        mid = store.start_multipart("U/data")
        store.finish_part("U/data", mid, 1, 0, [b"abc"], sha(b"abc"), fence=1, written=0)
        store.put("U/tail/0/1", b"piece", fresh=True)
        store.put("U/manifest.json", b"{}")
        store.complete_multipart("U/data", mid, [PartRef(1, 0, 3, sha(b"abc").hex())])
    finally:
        os.umask(old_umask)
    loose = [
        f"{p.relative_to(tmp_path)} {p.stat().st_mode & 0o777:o}"
        for p in [root, *root.rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert loose == []
