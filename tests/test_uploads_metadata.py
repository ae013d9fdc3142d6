"""Upload-Metadata in the uploads service: sealed under the upload's key, opened exactly."""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from gateway.catalog.base import Principal, Upload, UploadState
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.config import Settings
from gateway.errors import ERR, GatewayError
from gateway.keys.keyring import LocalKeyring
from gateway.metadata import METADATA, seal_legacy_metadata
from gateway.reader import Reader
from gateway.sealed import Header
from gateway.uploads import Uploads
from gateway.wiring import build_services
from tests.fakes import MemoryStore

S = 64 * 1024
ME = Principal("alice", "t1")
COMPLETE = UploadState.COMPLETE
FILENAME = b"DOE^JOHN_MRN12345.dcm"
RAW = f"filename {base64.b64encode(FILENAME).decode()},is_confidential,n MQ=="


def _service(tmp_path: Path, store: MemoryStore, catalog: SQLiteCatalog) -> Uploads:
    settings = Settings(data_dir=tmp_path, segment_size=S, acquire_timeout=3.0)
    return build_services(
        settings,
        store=store,
        catalog=catalog,
        keys=LocalKeyring.open(tmp_path / "keyring.json"),
    ).uploads


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Uploads]:
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    uploads = _service(tmp_path, MemoryStore(), catalog)
    await uploads.start()
    yield uploads
    await uploads.close()
    catalog.close()


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def stored(service: Uploads, upload_id: str) -> Upload:
    upload = service.catalog.get_upload(upload_id)
    assert upload is not None
    return upload


def nowhere_in_files(directory: Path, *secrets: bytes) -> list[str]:
    return [
        f"{p.name}: {s!r}"
        for p in directory.iterdir()
        if p.is_file()
        for s in secrets
        if s in p.read_bytes()
    ]


def readable(service: Uploads, upload: Upload) -> bytes:
    return b"".join(Reader(service.store, service.catalog, service.keys).read(upload))


async def test_metadata_is_sealed_and_opened_exactly(service: Uploads, tmp_path: Path) -> None:
    declared = await service.create(ME, length=10, metadata=RAW)
    deferred = await service.create(ME, length=None, metadata="k " + RAW[9:])
    empty = await service.create(ME, length=0, metadata="")
    partial = await service.create(ME, length=5, metadata=RAW, partial_concat="partial")
    none = await service.create(ME, length=5, metadata=None)
    for upload, sent in (
        (declared, RAW),
        (deferred, "k " + RAW[9:]),
        (empty, ""),
        (partial, RAW),
        (none, None),
    ):
        row = stored(service, upload.id)
        assert row.legacy_metadata is None
        if sent is None:
            assert row.metadata is None
        else:
            assert isinstance(row.metadata, bytes) and RAW.encode() not in row.metadata
            # Sealed under the upload's own key, by name, bound to its header.
            sealer = service.upload_keys.sealer(row, service.catalog.wrapped_key(row.dek_id))
            assert sealer.open_value(METADATA, row.metadata) == sent.encode()
        assert await service.open_metadata(row) == sent
        assert await service.open_metadata(upload) == sent
    assert empty.state == COMPLETE
    assert nowhere_in_files(tmp_path, RAW.encode(), FILENAME, RAW[9:].encode()) == []


async def test_a_final_gets_a_key_of_its_own_for_its_metadata(service: Uploads) -> None:
    parts = []
    for data in (b"abc", b"defgh"):
        part = await service.create(ME, length=len(data), metadata=RAW, partial_concat="partial")
        await service.write(ME, part.id, offset=0, body=body(data))
        parts.append(part.id)
    final = await service.create_final(ME, concat="final;x", partial_ids=parts, metadata=RAW)
    bare = await service.create_final(ME, concat="final;y", partial_ids=parts, metadata=None)
    for upload, sent in ((final, RAW), (bare, None)):
        row = stored(service, upload.id)
        header = Header.decode(row.header)
        assert (header.upload_id, header.dek_id, header.plaintext_size) == (row.id, row.dek_id, 8)
        assert service.catalog.wrapped_key(row.dek_id) is not None
        assert row.dek_id not in {stored(service, p).dek_id for p in parts}
        assert await service.open_metadata(row) == sent
        assert readable(service, row) == b"abcdefgh"  # still read from the partials
        assert not cast(MemoryStore, service.store).objects.get(
            f"{row.id}/data"
        )  # no object of its own
    # Deleting the final shreds its key; the partials stay whole.
    final_key = stored(service, final.id).dek_id
    await service.terminate(ME, final.id)
    assert service.catalog.wrapped_key(stored(service, bare.id).dek_id) is not None
    assert service.catalog.wrapped_key(final_key) is None
    assert service.catalog.get_upload(final.id) is None
    for part_id in parts:
        assert await service.open_metadata(await service.get(ME, part_id)) == RAW
    assert readable(service, stored(service, bare.id)) == b"abcdefgh"


async def test_sealed_metadata_moved_to_another_upload_does_not_open(service: Uploads) -> None:
    a = await service.create(ME, length=5, metadata=RAW)
    b = await service.create(ME, length=5, metadata="other b3RoZXI=")
    moved = replace(stored(service, b.id), metadata=stored(service, a.id).metadata)
    with pytest.raises(GatewayError) as caught:
        await service.open_metadata(moved)
    assert caught.value.err == ERR.STORED_DATA_CORRUPT
    # Nor a value sealed under another name of the same upload.
    row = stored(service, a.id)
    sealer = service.upload_keys.sealer(row, service.catalog.wrapped_key(row.dek_id))
    with pytest.raises(GatewayError):
        await service.open_metadata(replace(row, metadata=sealer.seal_value("digest", b"x")))


def _make_legacy(path: Path, plain: dict[str, str], *, final_id: str | None) -> None:
    """Turn rows into what version 1 left: plain-text metadata, finals without a key."""
    conn = sqlite3.connect(path)
    with conn:
        for upload_id, text in plain.items():
            conn.execute("UPDATE uploads SET metadata = ? WHERE id = ?", (text, upload_id))
        if final_id is not None:
            conn.execute("DELETE FROM wrapped_keys WHERE upload_id = ?", (final_id,))
            conn.execute("UPDATE uploads SET header = x'', dek_id = x'' WHERE id = ?", (final_id,))
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()


async def test_legacy_plain_metadata_is_sealed_in_place_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    service = _service(tmp_path, store, catalog)
    part = await service.create(ME, length=3, metadata=None, partial_concat="partial")
    await service.write(ME, part.id, offset=0, body=body(b"xyz"))
    final = await service.create_final(ME, concat="final;x", partial_ids=[part.id], metadata=None)
    active = await service.create(ME, length=10, metadata=None)
    gone = await service.create(ME, length=10, metadata=None)
    await service.runner.db(catalog.terminate, gone.id)  # key shredded, rows left
    await service.close()
    catalog.close()
    legacy = {
        part.id: RAW,
        final.id: "filename " + base64.b64encode(b"final-" + FILENAME).decode(),
        active.id: "",
        gone.id: RAW + ",gone Z29uZQ==",
    }
    _make_legacy(tmp_path / "catalog.sqlite3", legacy, final_id=final.id)
    secrets = [text.encode() for text in legacy.values() if text] + [FILENAME]
    assert nowhere_in_files(tmp_path, *secrets), "the check finds the plain text before"

    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    service = _service(tmp_path, store, catalog)
    try:
        # Before the service starts (other tools, or a request racing a start), a
        # legacy row still answers with its metadata.
        row = stored(service, part.id)
        assert row.legacy_metadata == RAW
        assert await service.open_metadata(row) == RAW
        with caplog.at_level(logging.DEBUG):
            await service.start()
        assert service.catalog.legacy_metadata() == []
        for upload_id, text in legacy.items():
            row = stored(service, upload_id)
            assert row.legacy_metadata is None
            if upload_id == gone.id:
                assert row.metadata is None  # nothing could open it: its key is gone
                continue
            assert isinstance(row.metadata, bytes)
            assert await service.open_metadata(row) == text
        # The old final now has a key and header of its own, and still reads.
        row = stored(service, final.id)
        assert Header.decode(row.header).upload_id == final.id
        assert readable(service, row) == b"xyz"
        assert (
            await seal_legacy_metadata(
                service.catalog, service.keys, service.runner, segment_size=S
            )
            == 0
        )
        assert nowhere_in_files(tmp_path, *secrets) == []
        logged = "\n".join(r.getMessage() + repr(vars(r)) for r in caplog.records)
        assert "sealed the plain-text metadata" in logged
        for secret in secrets:
            assert secret.decode() not in logged
    finally:
        await service.close()
        catalog.close()
    assert nowhere_in_files(tmp_path, *secrets) == []


async def test_legacy_metadata_under_an_unusable_key_is_left_for_later(tmp_path: Path) -> None:
    store = MemoryStore()
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    service = _service(tmp_path, store, catalog)
    broken = await service.create(ME, length=10, metadata=None)
    fine = await service.create(ME, length=10, metadata=None)
    await service.close()
    catalog.close()
    _make_legacy(tmp_path / "catalog.sqlite3", {broken.id: RAW, fine.id: RAW}, final_id=None)
    conn = sqlite3.connect(tmp_path / "catalog.sqlite3")
    with conn:  # a wrapped key that no longer unwraps
        conn.execute(
            "UPDATE wrapped_keys SET blob = ? WHERE upload_id = ?", (os.urandom(60), broken.id)
        )
    conn.close()

    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    service = _service(tmp_path, store, catalog)
    try:
        await service.start()
        assert [u.id for u in service.catalog.legacy_metadata()] == [broken.id]
        assert await service.open_metadata(stored(service, fine.id)) == RAW
    finally:
        await service.close()
        catalog.close()
