"""What only the PostgreSQL catalog does: its shredding, its serialised audit appends, its
schema created once by gateways starting together (the contract is in
tests/test_catalog_contract.py)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator

import psycopg
import pytest

from gateway.catalog.base import AuditQuery, AuditRecord, Lease, LeaseLost, Progress
from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.postgres_schema import SCHEMA_VERSION
from gateway.keys.base import WrappedKey
from tests.fakes import upload_row
from tests.postgres import start_postgres


@pytest.fixture
def cat(dsn: str) -> Iterator[PostgresCatalog]:
    catalog = PostgresCatalog(dsn)
    yield catalog
    catalog.close()


def test_shred_waits_for_older_snapshots_then_leaves_no_tuple(
    cat: PostgresCatalog, dsn: str
) -> None:
    blob = b"wrapped-key-bytes-" + b"\x17" * 16
    cat.create_upload(upload_row("u1"), WrappedKey("local-1", 1, blob))
    with psycopg.connect(dsn) as reader:
        # A transaction that saw the key still sees it: its tuple cannot go yet.
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM wrapped_keys").fetchone() == (1,)
        cat.terminate("u1")
        assert cat.shred("u1") is False
        reader.rollback()
    assert cat.shred("u1") is True
    with psycopg.connect(dsn) as conn:
        # No tuple of the table, live or dead, holds the key (the page's free space may;
        # see PostgresCatalog.shred).
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables "
            "WHERE relid = 'wrapped_keys'::regclass"
        ).fetchone()
    assert row == (0, 0)
    assert cat.wrapped_key(upload_row("u1").dek_id) is None


def test_shred_of_an_upload_without_a_key_is_done_at_once(cat: PostgresCatalog) -> None:
    assert cat.shred("never-existed") is True
    cat.create_upload(upload_row("f1", concat="final", dek_id=b""), None)
    cat.terminate("f1")
    assert cat.shred("f1") is True


def _entry(seq: int, prev: str) -> AuditRecord:
    entry = json.dumps({"prev": prev, "seq": seq}, sort_keys=True, separators=(",", ":"))
    return AuditRecord(
        seq=seq,
        time="2026-01-01T00:00:00.000000Z",
        action="test",
        principal="alice",
        tenant="t1",
        upload_id=None,
        upload_tenant=None,
        entry=entry,
        hash=hashlib.sha256(entry.encode()).hexdigest(),
    )


def test_audit_appends_from_many_gateways_chain_without_gaps(
    cat: PostgresCatalog, dsn: str
) -> None:
    others = [PostgresCatalog(dsn) for _ in range(3)]
    handles = [cat, *others]
    errors: list[BaseException] = []

    def append(handle: PostgresCatalog) -> None:
        try:
            for _ in range(15):
                handle.append_audit(_entry)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=append, args=(h,)) for h in handles for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for other in others:
        other.close()
    assert errors == []
    records = cat.audit_records(AuditQuery(limit=1000))
    assert [r.seq for r in records] == list(range(1, 121))
    prev = "0" * 64
    for record in records:
        assert json.loads(record.entry)["prev"] == prev
        prev = record.hash
    assert cat.audit_head() == (120, prev)


def test_gateways_starting_together_create_the_schema_once(dsn: str) -> None:
    opened: list[PostgresCatalog] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(PostgresCatalog(dsn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for catalog in opened:
        catalog.close()
    assert errors == []
    # One migrated, the others found it done.
    changes = sorted(catalog.schema_change for catalog in opened)
    assert changes == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        assert rows == [(SCHEMA_VERSION,)]


def test_commits_racing_a_terminate_never_deadlock(cat: PostgresCatalog, dsn: str) -> None:
    other = PostgresCatalog(dsn)
    errors: list[BaseException] = []
    try:
        for n in range(15):
            uid = f"r{n}"
            cat.create_upload(upload_row(uid), WrappedKey("local-1", 1, b"k" + uid.encode()))
            lease = cat.acquire_lease(uid, "A", 30.0, now=0.0)
            assert lease is not None

            def write(lease: Lease = lease) -> None:
                offset = 0
                try:
                    while True:
                        cat.commit(lease, Progress(offset, offset + 10))
                        offset += 10
                except LeaseLost:
                    pass
                except BaseException as e:
                    errors.append(e)

            writer = threading.Thread(target=write)
            writer.start()
            other.terminate(uid)
            other.forget(uid)
            writer.join()
    finally:
        other.close()
    assert errors == []


def test_the_first_calls_after_a_restart_of_the_database_succeed() -> None:
    """Pooled connections the restart closed are replaced when taken, not used and
    failed: a client sees no 503 once the database is back."""
    server = start_postgres()
    try:
        catalog = PostgresCatalog(server.dsn(server.create_database()), max_size=4)
        try:
            catalog.create_upload(upload_row("u1"), None)
            barrier = threading.Barrier(4)

            def hold() -> None:  # four connections in the pool, all idle afterwards
                with catalog._connection():
                    barrier.wait(5)

            threads = [threading.Thread(target=hold) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server.shut_down()
            server.start_again()
            for _ in range(4):
                assert catalog.get_upload("u1") is not None
            catalog.check()
        finally:
            catalog.close()
    finally:
        server.stop()


def test_a_failed_statement_gives_its_connection_back(dsn: str) -> None:
    """A statement's own error (here a cancel) leaves the link intact: the connection
    goes back to the pool, or a pool of one would have none left."""
    catalog = PostgresCatalog(dsn, max_size=1)
    try:
        with pytest.raises(psycopg.errors.QueryCanceled), catalog._tx() as cur:
            cur.execute("SET LOCAL statement_timeout = '10ms'")
            cur.execute("SELECT pg_sleep(1)")
        assert catalog.get_upload("u1") is None
    finally:
        catalog.close()
