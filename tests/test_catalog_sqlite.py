"""What only the SQLite catalog does: its files, page shredding, rollback, schema migrations.

What every catalog promises (round trips, fenced commits, leases, tokens) is checked in
tests/test_catalog_contract.py, on SQLite too.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import audit
from gateway.auditing import Audit
from gateway.catalog.base import (
    Deletion,
    Hold,
    LeaseLost,
    Progress,
    RecordRow,
    SchemaMismatch,
    StoredReceipt,
    TailPiece,
    Upload,
    UploadState,
)
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.catalog.sqlite_leases import FENCING_BLOCK
from gateway.catalog.sqlite_schema import SCHEMA_VERSION
from gateway.keys.base import WrappedKey
from tests.fakes import upload_row
from tests.tushttp import catalog_files_holding

TTL = 30.0


def _upload(upload_id: str = "u1", **kw: object) -> Upload:
    return upload_row(upload_id, **{"partials": ("p1", "p2"), **kw})


def _wrapped(tag: bytes = b"x") -> WrappedKey:
    return WrappedKey(kek_id="local-1", kek_version=1, blob=b"blob-" + tag)


def _record(i: int, final: bool = False) -> RecordRow:
    return RecordRow(
        index=i,
        plaintext_len=100 + i,
        final=final,
        size=200 + i,
        sha256=bytes([i]) * 32,
        etag=f"e{i}",
    )


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    c = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    yield c
    c.close()


def _snapshot(cat: SQLiteCatalog, upload_id: str) -> tuple[object, ...]:
    return (cat.get_upload(upload_id), cat.records(upload_id), cat.tail_pieces(upload_id))


def test_states_are_stored_as_text_and_read_as_the_enum(cat: SQLiteCatalog, tmp_path: Path) -> None:
    cat.create_upload(_upload("a"), None)
    cat.create_upload(_upload("c", state=UploadState.COMPLETE), None)
    cat.create_upload(_upload("t"), None)
    cat.terminate("t")
    raw = sqlite3.connect(tmp_path / "catalog.sqlite3")
    try:
        stored = raw.execute("SELECT id, state, typeof(state) FROM uploads ORDER BY id").fetchall()
    finally:
        raw.close()
    assert stored == [
        ("a", "active", "text"),
        ("c", "complete", "text"),
        ("t", "terminated", "text"),
    ]
    read = {u: cat.get_upload(u) for u in "act"}
    assert {u: up.state if up else None for u, up in read.items()} == {
        "a": UploadState.ACTIVE,
        "c": UploadState.COMPLETE,
        "t": UploadState.TERMINATED,
    }
    assert all(up is not None and type(up.state) is UploadState for up in read.values())


def test_failure_midway_rolls_back(cat: SQLiteCatalog) -> None:
    cat.create_upload(_upload(), None)
    lease = cat.acquire_lease("u1", "A", TTL, now=0.0)
    assert lease is not None
    before = _snapshot(cat, "u1")
    # The records go in first, then the piece violates NOT NULL.
    bad = TailPiece(0, 0, None, 10)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        cat.commit(lease, Progress(0, 10, records=[_record(0), _record(1)], add_piece=bad))
    assert _snapshot(cat, "u1") == before


def test_terminate_shreds_key(cat: SQLiteCatalog, tmp_path: Path) -> None:
    up = _upload()
    secret = b"wrapped-key-bytes-" * 4
    cat.create_upload(up, WrappedKey(kek_id="local-1", kek_version=1, blob=secret))
    lease = cat.acquire_lease("u1", "A", TTL, now=0.0)
    assert lease is not None
    cat.terminate("u1")
    got = cat.get_upload("u1")
    assert got is not None and got.state == UploadState.TERMINATED
    assert cat.wrapped_key(up.dek_id) is None
    assert cat.shred("u1")
    # Gone from the files too (database and WAL), not just unreachable by queries.
    assert catalog_files_holding(tmp_path, secret) == []
    # A writer still in flight can record nothing, let alone complete the upload.
    with pytest.raises(LeaseLost):
        cat.commit(lease, Progress(0, 10, complete_at=1.0))
    assert cat.expired(now=1e9) == []


def test_the_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        cat = SQLiteCatalog(tmp_path / "catalog.sqlite3")
        cat.create_upload(_upload(), _wrapped())
    finally:
        os.umask(old_umask)
    try:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["catalog.sqlite3", "catalog.sqlite3-shm", "catalog.sqlite3-wal"]
        assert {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in names} == {0o600}
    finally:
        cat.close()


def test_a_reader_of_an_old_snapshot_postpones_shredding(tmp_path: Path) -> None:
    cat = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    secret = os.urandom(60)
    cat.create_upload(_upload(), WrappedKey(kek_id="local-1", kek_version=1, blob=secret))
    cat.create_upload(_upload("u2"), _wrapped(b"2"))
    reader = sqlite3.connect(tmp_path / "catalog.sqlite3", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM wrapped_keys").fetchone() == (2,)
        cat.terminate("u1")
        assert cat.wrapped_key(_upload().dek_id) is None
        # The reader may still read the key: its bytes cannot be erased yet, and
        # shredding says so rather than pretend.
        assert not cat.shred("u1")
        assert catalog_files_holding(tmp_path, secret) != []
        assert cat.removals_pending() == ["u1"]
        reader.execute("COMMIT")
        assert cat.shred("u1")
        assert catalog_files_holding(tmp_path, secret) == []
        cat.forget("u1")
        assert cat.removals_pending() == []
    finally:
        reader.close()
        cat.close()


def test_a_stale_copy_of_a_key_in_a_table_page_is_erased(tmp_path: Path) -> None:
    """secure_delete zeroes deleted cells and freed pages, not every stale copy: a page
    rebalance leaves copies of moved cells in the page's unused space. A copy left by
    a connection without secure_delete stands in for one here."""
    path = tmp_path / "catalog.sqlite3"
    cat = SQLiteCatalog(path)
    secret = os.urandom(60)
    cat.create_upload(_upload(), WrappedKey(kek_id="local-1", kek_version=1, blob=secret))
    cat.create_upload(_upload("u2"), _wrapped(b"2"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA secure_delete = OFF")
    other.execute("INSERT INTO wrapped_keys VALUES (x'00', 'u2', 'local-1', 1, ?)", (secret,))
    other.execute("DELETE FROM wrapped_keys WHERE dek_id = x'00'")
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    raw = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
    assert raw.count(secret) == 2  # the live row, and the stale copy
    cat.terminate("u1")
    assert cat.shred("u1")
    assert catalog_files_holding(tmp_path, secret) == []
    assert cat.wrapped_key(b"dek-u2") == _wrapped(b"2")  # the others are kept
    cat.close()
    reopened = SQLiteCatalog(path)  # and the rebuilt table is the same table
    assert reopened.wrapped_key(b"dek-u2") == _wrapped(b"2")
    reopened.create_upload(_upload("u3"), _wrapped(b"3"))
    reopened.close()


def test_shredding_after_a_restart_rebuilds_the_key_table(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    cat = SQLiteCatalog(path)
    secret = os.urandom(60)
    cat.create_upload(_upload(), WrappedKey(kek_id="local-1", kek_version=1, blob=secret))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM uploads").fetchall()
    cat.terminate("u1")
    assert not cat.shred("u1")
    cat.close()
    reader.close()
    # Another process (or this one restarted) no longer knows the key's bytes.
    cat = SQLiteCatalog(path)
    assert cat.removals_pending() == ["u1"]
    assert cat.shred("u1")
    assert catalog_files_holding(tmp_path, secret) == []
    cat.close()


LEGACY = "filename RE9FXkpPSE5fTVJOMTIzNDUuZGNt"  # as a version 1 catalog held it


def _version_1_catalog(path: Path) -> None:
    """A catalog as version 1 left it: plain-text metadata (TEXT values)."""
    cat = SQLiteCatalog(path)
    cat.create_upload(_upload("u1"), _wrapped(b"1"))
    cat.create_upload(_upload("u2", metadata=None), _wrapped(b"2"))
    cat.create_upload(_upload("f1", header=b"", dek_id=b"", concat="final;x"), None)
    cat.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE uploads SET metadata = ? WHERE id IN ('u1', 'f1')", (LEGACY,))
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()


def test_a_version_1_catalog_shows_its_plain_metadata_as_legacy(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _version_1_catalog(path)
    cat = SQLiteCatalog(path)
    try:
        got = cat.get_upload("u1")
        assert got is not None and (got.metadata, got.legacy_metadata) == (None, LEGACY)
        assert LEGACY not in repr(got)
        plain = cat.get_upload("u2")
        assert plain is not None and (plain.metadata, plain.legacy_metadata) == (None, None)
        assert [u.id for u in cat.legacy_metadata()] == ["f1", "u1"]
        assert [u.id for u in cat.legacy_metadata(after="f1")] == ["u1"]
        assert [u.id for u in cat.legacy_metadata(limit=1)] == ["f1"]
        # Never written back as it is.
        with pytest.raises(ValueError):
            cat.create_upload(replace(got, id="u3"), None)
        with pytest.raises(ValueError):
            cat.seal_legacy_metadata([(got, None)])
    finally:
        cat.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_sealing_legacy_metadata_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    _version_1_catalog(path)
    cat = SQLiteCatalog(path)
    try:
        u1, f1 = cat.get_upload("u1"), cat.get_upload("f1")
        assert u1 is not None and f1 is not None
        sealed_u1 = replace(u1, legacy_metadata=None, metadata=b"sealed-u1")
        sealed_f1 = replace(
            f1, legacy_metadata=None, metadata=b"sealed-f1", header=b"hdr", dek_id=b"dek-f1"
        )
        changes = [(sealed_u1, None), (sealed_f1, _wrapped(b"f1"))]
        assert cat.seal_legacy_metadata(changes) == 2
        assert cat.get_upload("u1") == sealed_u1
        assert cat.get_upload("f1") == sealed_f1
        assert cat.wrapped_key(b"dek-f1") == _wrapped(b"f1")
        assert cat.wrapped_key(u1.dek_id) == _wrapped(b"1")
        assert cat.legacy_metadata() == []
        # Done already (another process got there first): nothing changes.
        assert cat.seal_legacy_metadata(changes) == 0
        # The plain text is gone from the files, not only from query results.
        leftovers = [p.name for p in tmp_path.iterdir() if LEGACY.encode() in p.read_bytes()]
        assert not leftovers
    finally:
        cat.close()
    assert not [p.name for p in tmp_path.iterdir() if LEGACY.encode() in p.read_bytes()]


def test_a_newer_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SQLiteCatalog(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(SchemaMismatch, match="version 99, newer"):
        SQLiteCatalog(path)


VECTORS = Path(__file__).parent / "vectors"


def test_a_version_2_catalog_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path)
    conn.executescript((VECTORS / "catalog_v2.sql").read_text())
    conn.close()
    cat = SQLiteCatalog(path)
    try:
        done, open_ = cat.get_upload("done"), cat.get_upload("open")
        assert done is not None and done.state == UploadState.COMPLETE and not done.held
        assert open_ is not None and open_.offset == 0 and not open_.held
        assert cat.wrapped_key(b"dek-done") == WrappedKey("local", 1, b"blob-done")
        token = cat.principal_for(b"\x22" * 32)
        assert token is not None and token.roles == frozenset()
        # What version 3 adds works on the old rows.
        assert cat.retention_due(completed_before=2000.0) == ["done"]
        assert cat.place_hold("done", Hold("CASE-1", "cli:root", 3.0))
        assert cat.retention_due(completed_before=2000.0) == []
        assert cat.expired(now=4000.0) == ["open"]
        cat.terminate("open", _deletion("open"))
        assert cat.deletion("open") == _deletion("open")
        assert cat.shred("open")
        cat.forget("open", StoredReceipt("open", 5.0, "a.b.c"))
        assert cat.receipt("open") == StoredReceipt("open", 5.0, "a.b.c")
    finally:
        cat.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()
    again = SQLiteCatalog(path)  # opening an upgraded catalog changes nothing
    try:
        assert again.hold("done") == Hold("CASE-1", "cli:root", 3.0)
    finally:
        again.close()


def _deletion(upload_id: str) -> Deletion:
    return Deletion(
        upload_id=upload_id,
        requested_at=4000.0,
        reason="expiry",
        deleted_by={"reaper": "expiry"},
        manifest_sha256=None,
        dek_id=b"dek-" + upload_id.encode(),
        kek_id="local",
        kek_version=1,
    )


def test_a_version_3_catalog_gains_the_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cat = SQLiteCatalog(path)
    cat.create_upload(_upload(), _wrapped())
    cat.close()
    conn = sqlite3.connect(path)
    with conn:  # as version 3 left it: no audit tables
        conn.execute("DROP TABLE audit_log")
        conn.execute("DROP TABLE audit_checkpoints")
        conn.execute("UPDATE schema_version SET version = 3")
    conn.close()
    cat = SQLiteCatalog(path)
    try:
        assert cat.get_upload("u1") is not None
        assert cat.audit_head() == (0, "0" * 64)
        assert Audit(cat).record_now(audit.UPLOAD_CREATED, audit.Actor("alice"), "u1")
        assert cat.audit_head()[0] == 1
        assert cat.audit_checkpoints() == []
    finally:
        cat.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def _fencing_rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, last_token FROM lease_tokens").fetchall())
    finally:
        conn.close()


def _take_and_release(cat: SQLiteCatalog, upload_id: str, times: int) -> list[int]:
    """The fencing tokens of `times` leases taken and handed back in turn."""
    tokens = []
    for i in range(times):
        lease = cat.acquire_lease(upload_id, f"w{i}", TTL, 0.0)
        assert lease is not None
        tokens.append(lease.token)
        cat.release_lease(lease)
    return tokens


def test_taking_a_lease_fsyncs_only_to_reserve_a_block_of_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    try:
        cat.create_upload(_upload("u1"), _wrapped())
        commits: list[bool] = []  # each transaction's `durable`
        tx = cat._tx

        def counting_tx(*, durable: bool = True) -> AbstractContextManager[sqlite3.Cursor]:
            commits.append(durable)
            return tx(durable=durable)

        monkeypatch.setattr(cat, "_tx", counting_tx)
        tokens = _take_and_release(cat, "u1", 5)
        monkeypatch.undo()
        assert tokens == sorted(set(tokens))
        # The first lease finds no block reserved and reserves one (with an fsync);
        # the others are handed out from it, with none.
        assert commits.count(True) == 1
        assert _fencing_rows(tmp_path / "catalog.sqlite3") == {
            "fencing": tokens[-1],
            "reserved": tokens[0] + FENCING_BLOCK - 1,
        }
    finally:
        cat.close()


def test_tokens_lost_to_a_power_cut_are_never_handed_out_again(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    cat = SQLiteCatalog(path)
    cat.create_upload(_upload("u1"), _wrapped())
    seen = _take_and_release(cat, "u1", 3)
    cat.close()
    # A power cut loses the commits made without an fsync: the counter goes back to
    # before these tokens, the reserved block's end (committed with one) stays.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE lease_tokens SET last_token = 0 WHERE name = 'fencing'")
    conn.close()
    again = SQLiteCatalog(path)
    try:
        lease = again.acquire_lease("u1", "after", TTL, 0.0)
        assert lease is not None
        assert lease.token > max(seen)
        assert lease.token > seen[0] + FENCING_BLOCK - 1  # past the whole old block
    finally:
        again.close()
