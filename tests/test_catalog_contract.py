"""What every catalog promises (gateway/catalog/base.py), checked on each implementation.

An implementation joins by one fixture that yields an opener: each call opens another
handle (connection) on the same, initially empty catalog; the fixture closes them all.
Add its name to `IMPLEMENTATIONS`. What only one implementation does (SQLite's files,
shredding of its pages, migrations) stays in that implementation's own tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.catalog.base import (
    Catalog,
    Deletion,
    Grant,
    Hold,
    HookEvent,
    Lease,
    LeaseLost,
    LeaseState,
    OffsetConflict,
    Principal,
    Progress,
    RecordRow,
    StoredReceipt,
    TailPiece,
    Upload,
    UploadHeld,
    UploadState,
)
from gateway.catalog.postgres import PostgresCatalog
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.base import WrappedKey
from tests.fakes import upload_row
from tests.postgres import PostgresServer

TTL = 30.0
Opener = Callable[[], Catalog]


@pytest.fixture
def sqlite_catalogs(tmp_path: Path) -> Iterator[Opener]:
    opened: list[SQLiteCatalog] = []

    def open_catalog() -> Catalog:
        path = tmp_path / "catalog.sqlite3"
        # Later handles open by a str path, which the constructor takes too.
        opened.append(SQLiteCatalog(str(path) if opened else path))
        return opened[-1]

    yield open_catalog
    for catalog in opened:
        catalog.close()


@pytest.fixture
def postgresql_catalogs(postgres: PostgresServer) -> Iterator[Opener]:
    """Each test gets a database of its own on the session's server."""
    database = postgres.create_database()
    opened: list[PostgresCatalog] = []

    def open_catalog() -> Catalog:
        opened.append(PostgresCatalog(postgres.dsn(database)))
        return opened[-1]

    yield open_catalog
    for catalog in opened:
        catalog.close()
    postgres.drop_database(database)


IMPLEMENTATIONS = ["sqlite_catalogs", "postgresql_catalogs"]


@pytest.fixture(params=IMPLEMENTATIONS)
def catalogs(request: pytest.FixtureRequest) -> Opener:
    opener: Opener = request.getfixturevalue(request.param)
    return opener


@pytest.fixture
def cat(catalogs: Opener) -> Catalog:
    return catalogs()


def upload(upload_id: str = "u1", **changes: object) -> Upload:
    return upload_row(upload_id, **changes)


def wrapped(tag: bytes = b"x") -> WrappedKey:
    return WrappedKey(kek_id="local-1", kek_version=1, blob=b"blob-" + tag)


def record(i: int, final: bool = False) -> RecordRow:
    return RecordRow(
        i, plaintext_len=100 + i, final=final, size=200 + i, sha256=bytes([i]) * 32, etag=f"e{i}"
    )


def lease_on(cat: Catalog, upload_id: str = "u1", holder: str = "A", now: float = 0.0) -> Lease:
    lease = cat.acquire_lease(upload_id, holder, TTL, now=now)
    assert lease is not None
    return lease


def renew(cat: Catalog, lease: Lease, now: float) -> LeaseState:
    [state] = cat.renew_leases([lease], TTL, now=now)
    return state


def snapshot(cat: Catalog, upload_id: str) -> tuple[object, ...]:
    return (cat.get_upload(upload_id), cat.records(upload_id), cat.tail_pieces(upload_id))


class TestUploads:
    def test_an_upload_reads_back_as_created(self, cat: Catalog) -> None:
        final = upload(concat="final", partials=("p1", "p2"), length=None, multipart_id="mp")
        cat.create_upload(final, wrapped())
        assert cat.get_upload("u1") == final
        assert cat.wrapped_key(final.dek_id) == wrapped()
        bare = upload("u2", header=b"", metadata=None, expires_at=None, length=7, checksum=None)
        cat.create_upload(bare, None)
        assert cat.get_upload("u2") == bare
        assert cat.wrapped_key(bare.dek_id) is None
        assert cat.get_upload("nope") is None
        assert cat.wrapped_key(b"nope") is None
        assert cat.legacy_metadata() == []  # nothing plain in a new catalog

    def test_commit_moves_the_upload_forward(self, cat: Catalog) -> None:
        # Length and multipart id are set at creation; commits leave them be.
        cat.create_upload(upload(checksum=None, length=130, multipart_id="mp1"), wrapped())
        lease = lease_on(cat)
        cat.commit(lease, Progress(0, 50, add_piece=TailPiece(0, 0, 0, 50)))
        cat.commit(lease, Progress(50, 80, add_piece=TailPiece(0, 1, 50, 30)))
        assert [p.piece for p in cat.tail_pieces("u1")] == [0, 1]
        # Segment 0 is sealed into two records; its pieces go, a piece of segment 1 comes.
        cat.commit(
            lease,
            Progress(
                expected_offset=80,
                offset=120,
                records=[record(0), record(1, final=True)],
                add_piece=TailPiece(1, 0, 0, 40),
                drop_pieces_below=1,
                expires_at=9000.0,
                checksum=b"\x00sealed",
            ),
        )
        assert cat.records("u1") == [record(0), record(1, final=True)]
        assert [r.final for r in cat.records("u1")] == [False, True]
        assert all(type(r.final) is bool for r in cat.records("u1"))
        assert cat.tail_pieces("u1") == [TailPiece(1, 0, 0, 40)]
        # Two pieces merged into one: the old rows go, the merged one comes.
        cat.commit(lease, Progress(120, 130, add_piece=TailPiece(1, 1, 40, 10)))
        merged = TailPiece(1, 2, 0, 50)
        cat.commit(
            lease,
            Progress(130, 130, add_piece=merged, drop_pieces=cat.tail_pieces("u1")),
        )
        assert cat.tail_pieces("u1") == [merged]
        cat.commit(lease, Progress(130, 130, complete_at=777.0))
        got = cat.get_upload("u1")
        assert got is not None
        assert (got.offset, got.expires_at, got.checksum) == (130, 9000.0, b"\x00sealed")
        assert (got.length, got.multipart_id) == (130, "mp1")
        assert (got.state, got.completed_at) == (UploadState.COMPLETE, 777.0)

    def test_one_commit_records_and_completes(self, cat: Catalog) -> None:
        cat.create_upload(upload(length=100), None)
        cat.commit(
            lease_on(cat), Progress(0, 100, records=[record(0, final=True)], complete_at=5.0)
        )
        got = cat.get_upload("u1")
        assert got is not None
        assert (got.offset, got.state, got.completed_at) == (100, UploadState.COMPLETE, 5.0)
        assert cat.records("u1") == [record(0, final=True)]

    def test_a_record_written_again_replaces_the_old_row(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        lease = lease_on(cat)
        cat.commit(lease, Progress(0, 10, records=[record(0)]))
        newer = replace(record(0), etag="again")
        cat.commit(lease, Progress(10, 10, records=[newer]))
        assert cat.records("u1") == [newer]

    def test_a_stale_lease_records_nothing(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        lease = lease_on(cat)
        before = snapshot(cat, "u1")
        step = Progress(0, 10, records=[record(0)], add_piece=TailPiece(0, 0, 0, 10))
        with pytest.raises(LeaseLost):
            cat.commit(replace(lease, token=lease.token - 1), step)
        with pytest.raises(LeaseLost):
            cat.commit(replace(lease, holder="B"), step)
        assert snapshot(cat, "u1") == before

    def test_a_wrong_offset_records_nothing(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        lease = lease_on(cat)
        cat.commit(lease, Progress(0, 10, add_piece=TailPiece(0, 0, 0, 10)))
        before = snapshot(cat, "u1")
        with pytest.raises(OffsetConflict):
            cat.commit(
                lease,
                Progress(
                    5,
                    20,
                    records=[record(0)],
                    add_piece=TailPiece(0, 1, 10, 10),
                    drop_pieces_below=1,
                    complete_at=1.0,
                ),
            )
        assert snapshot(cat, "u1") == before

    def test_a_length_is_set_once(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        cat.set_length("u1", 10)
        cat.set_length("u1", 20)
        got = cat.get_upload("u1")
        assert got is not None and got.length == 10

    def test_expired_lists_active_uploads_by_expiry(self, cat: Catalog) -> None:
        cat.create_upload(upload("b", expires_at=200.0), None)
        cat.create_upload(upload("a", expires_at=100.0), None)
        cat.create_upload(upload("c", expires_at=None), None)
        cat.create_upload(upload("d", expires_at=50.0, state=UploadState.COMPLETE), None)
        assert cat.expired(now=99.0) == []
        assert cat.expired(now=100.0) == ["a"]
        assert cat.expired(now=1000.0) == ["a", "b"]
        assert cat.expired(now=1000.0, limit=1) == ["a"]

    def test_open_uploads_counts_the_principals_unfinished_bytes(self, cat: Catalog) -> None:
        cat.create_upload(upload("a", length=100), None)
        cat.create_upload(upload("b", length=None, offset=0), None)
        cat.create_upload(upload("c", length=7, state=UploadState.COMPLETE), None)
        cat.create_upload(upload("d", length=1000, owner="bob"), None)
        cat.commit(lease_on(cat, "b"), Progress(0, 30))  # deferred length: its offset
        assert cat.open_uploads("alice", "t1") == (2, 130)
        assert cat.open_uploads("alice", "t2") == (0, 0)


class TestRemoval:
    def test_terminate_deletes_the_key_and_stops_writers(self, cat: Catalog) -> None:
        up = upload()
        cat.create_upload(up, wrapped())
        lease = lease_on(cat)
        cat.terminate("u1")
        got = cat.get_upload("u1")
        assert got is not None and got.state == UploadState.TERMINATED
        assert cat.wrapped_key(up.dek_id) is None
        with pytest.raises(LeaseLost):
            cat.commit(lease, Progress(0, 10, complete_at=1.0))
        assert cat.expired(now=1e9) == []
        assert cat.removals_pending() == ["u1"]
        assert cat.shred("u1")
        cat.forget("u1")
        assert cat.removals_pending() == []

    def test_a_retired_partial_keeps_its_key(self, cat: Catalog) -> None:
        partial = upload("p1", concat="partial", length=3)
        cat.create_upload(partial, wrapped())
        cat.create_upload(upload("f", concat="final", partials=("p1", "p2")), wrapped(b"f"))
        cat.create_upload(upload("g", concat="final", partials=("p10",)), wrapped(b"g"))
        cat.retire("p1")
        got = cat.get_upload("p1")
        assert got is not None and got.state == UploadState.TERMINATED
        assert cat.wrapped_key(partial.dek_id) == wrapped()
        assert cat.removals_pending() == []
        assert cat.finals_using("p1") == ["f"]  # not "g", whose partial is p10
        cat.terminate("f")
        assert cat.finals_using("p1") == []

    def test_forget_removes_every_row_of_one_upload(self, cat: Catalog) -> None:
        up = upload()
        cat.create_upload(up, wrapped())
        cat.create_upload(upload("u2"), wrapped(b"2"))
        lease = lease_on(cat)
        cat.commit(lease, Progress(0, 10, records=[record(0)], add_piece=TailPiece(1, 0, 0, 10)))
        cat.forget("u1")
        assert snapshot(cat, "u1") == (None, [], [])
        assert cat.wrapped_key(up.dek_id) is None
        with pytest.raises(LeaseLost):
            cat.commit(lease, Progress(10, 20))
        assert cat.get_upload("u2") is not None


class TestKeyRotation:
    def keys(self, cat: Catalog, n: int) -> list[Upload]:
        ups = [upload(f"u{i:02d}") for i in range(n)]
        for i, up in enumerate(ups):
            cat.create_upload(up, WrappedKey("local-1", 1 + i % 2, b"blob-%d" % i))
        return ups

    def test_keys_are_counted_by_kek_and_version(self, cat: Catalog) -> None:
        assert cat.wrapped_key_counts() == {}
        self.keys(cat, 5)
        cat.create_upload(upload("hsm"), WrappedKey("hsm-1", 1, b"blob-h"))
        assert cat.wrapped_key_counts() == {("local-1", 1): 3, ("local-1", 2): 2, ("hsm-1", 1): 1}

    def test_keys_not_under_a_version_page_by_dek_id(self, cat: Catalog) -> None:
        ups = self.keys(cat, 7)
        cat.create_upload(upload("hsm"), WrappedKey("hsm-1", 2, b"blob-h"))
        seen: list[bytes] = []
        after = b""
        while page := cat.wrapped_keys_not_under("local-1", 2, after, limit=2):
            assert len(page) <= 2
            seen += [k.dek_id for k in page]
            after = page[-1].dek_id
        want = {u.dek_id for i, u in enumerate(ups) if i % 2 == 0} | {upload("hsm").dek_id}
        assert seen == sorted(want)  # every one once, in order; other KEKs too
        first = cat.wrapped_keys_not_under("local-1", 2, after=b"dek-u", limit=1)[0]
        assert (first.upload_id, first.wrapped) == ("u00", WrappedKey("local-1", 1, b"blob-0"))

    def test_a_key_is_replaced_only_if_unchanged(self, cat: Catalog) -> None:
        up = upload()
        old = WrappedKey("local-1", 1, b"old")
        new = WrappedKey("local-1", 2, b"new")
        cat.create_upload(up, old)
        assert not cat.replace_wrapped_key(up.dek_id, WrappedKey("local-1", 1, b"other"), new)
        assert cat.wrapped_key(up.dek_id) == old
        assert cat.replace_wrapped_key(up.dek_id, old, new)
        assert cat.wrapped_key(up.dek_id) == new
        assert not cat.replace_wrapped_key(up.dek_id, old, WrappedKey("local-1", 3, b"x"))
        assert cat.wrapped_key(up.dek_id) == new
        assert cat.wrapped_key_counts() == {("local-1", 2): 1}

    def test_a_deleted_key_is_never_brought_back(self, cat: Catalog) -> None:
        up = upload()
        old = WrappedKey("local-1", 1, b"old")
        cat.create_upload(up, old)
        cat.terminate("u1")
        assert not cat.replace_wrapped_key(up.dek_id, old, WrappedKey("local-1", 2, b"new"))
        assert cat.wrapped_key(up.dek_id) is None
        assert cat.wrapped_keys_not_under("local-1", 2) == []

    def test_racing_rewraps_of_one_key_one_wins(self, catalogs: Opener) -> None:
        handles = [catalogs() for _ in range(4)]
        up = upload()
        old = WrappedKey("local-1", 1, b"old")
        handles[0].create_upload(up, old)
        results: list[bool] = []
        barrier = threading.Barrier(len(handles))

        def rewrap(i: int) -> None:
            barrier.wait()
            new = WrappedKey("local-1", 2, b"new-%d" % i)
            results.append(handles[i].replace_wrapped_key(up.dek_id, old, new))

        threads = [threading.Thread(target=rewrap, args=(i,)) for i in range(len(handles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]


def deletion(upload_id: str = "u1", reason: str = "client") -> Deletion:
    return Deletion(
        upload_id=upload_id,
        requested_at=123.5,
        reason=reason,
        deleted_by={"principal": "alice", "tenant": "t1"},
        manifest_sha256="ab" * 32,
        dek_id=b"dek-" + upload_id.encode(),
        kek_id="local-1",
        kek_version=1,
    )


class TestHoldsAndReceipts:
    def test_a_hold_is_placed_read_and_lifted(self, cat: Catalog) -> None:
        cat.create_upload(upload(), wrapped())
        assert cat.hold("u1") is None
        assert not cat.release_hold("u1")
        assert cat.place_hold("u1", Hold("CASE-2026-17", "t1/admin", 10.0))
        assert cat.hold("u1") == Hold("CASE-2026-17", "t1/admin", 10.0)
        got = cat.get_upload("u1")
        assert got is not None and got.held
        assert cat.place_hold("u1", Hold(None, "cli:root", 11.0))  # replaced in place
        assert cat.hold("u1") == Hold(None, "cli:root", 11.0)
        assert cat.release_hold("u1")
        assert cat.hold("u1") is None and not cat.release_hold("u1")
        got = cat.get_upload("u1")
        assert got is not None and not got.held
        assert not cat.place_hold("nope", Hold(None, "x", 1.0))

    def test_a_held_upload_is_neither_terminated_retired_expired_nor_due(
        self, cat: Catalog
    ) -> None:
        cat.create_upload(upload("a", expires_at=100.0), wrapped(b"a"))
        cat.create_upload(
            upload("c", state=UploadState.COMPLETE, completed_at=50.0, concat="partial"),
            wrapped(b"c"),
        )
        for uid in ("a", "c"):
            assert cat.place_hold(uid, Hold("C-1", "admin", 1.0))
        assert cat.expired(now=1e9) == [] and cat.retention_due(1e9) == []
        with pytest.raises(UploadHeld):
            cat.terminate("a", deletion("a"))
        with pytest.raises(UploadHeld):
            cat.retire("c")
        a, c = cat.get_upload("a"), cat.get_upload("c")
        assert a is not None and a.state == UploadState.ACTIVE and c is not None
        assert c.state == UploadState.COMPLETE
        assert cat.wrapped_key(b"dek-a") == wrapped(b"a") and cat.deletion("a") is None
        cat.release_hold("a")
        assert cat.expired(now=1e9) == ["a"]
        cat.terminate("a", deletion("a"))
        assert not cat.place_hold("a", Hold(None, "admin", 2.0))  # terminated: too late

    def test_retention_due_lists_complete_uploads_oldest_first(self, cat: Catalog) -> None:
        done = UploadState.COMPLETE
        cat.create_upload(upload("new", state=done, completed_at=300.0), None)
        cat.create_upload(upload("old", state=done, completed_at=100.0), None)
        cat.create_upload(upload("mid", state=done, completed_at=200.0), None)
        cat.create_upload(upload("open", expires_at=1.0), None)
        assert cat.retention_due(completed_before=99.0) == []
        assert cat.retention_due(completed_before=200.0) == ["old", "mid"]
        assert cat.retention_due(completed_before=1e9, limit=2) == ["old", "mid"]
        cat.terminate("old")
        assert cat.retention_due(completed_before=1e9) == ["mid", "new"]

    def test_a_deletion_is_recorded_then_its_receipt_kept(self, cat: Catalog) -> None:
        cat.create_upload(upload(), wrapped())
        cat.terminate("u1", deletion())
        assert cat.deletion("u1") == deletion()
        cat.terminate("u1", deletion(reason="expiry"))  # again: the first one stands
        assert cat.deletion("u1") == deletion()
        assert cat.receipt("u1") is None
        assert cat.shred("u1")
        cat.forget("u1", StoredReceipt("u1", 200.0, "h.p.s"))
        assert cat.deletion("u1") is None and cat.get_upload("u1") is None
        assert cat.receipt("u1") == StoredReceipt("u1", 200.0, "h.p.s")
        assert cat.receipt("u2") is None


class TestLeases:
    def test_lease_held_only_looks(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        assert not cat.lease_held("u1", now=0.0)
        a = lease_on(cat)
        assert cat.lease_held("u1", now=1.0)
        assert not cat.lease_held("u1", now=TTL)  # expired: whoever held it is gone
        state = renew(cat, a, now=2.0)
        assert state.valid and not state.release_requested
        cat.release_lease(a)
        assert not cat.lease_held("u1", now=3.0)

    def test_a_release_is_requested_then_the_lease_handed_over(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        a = lease_on(cat)
        assert a.expires_at == TTL
        assert cat.acquire_lease("u1", "B", TTL, now=1.0) is None
        state = renew(cat, a, now=2.0)
        assert state.valid and state.release_requested
        cat.release_lease(a)
        b = lease_on(cat, holder="B", now=3.0)
        assert b.token > a.token
        state = renew(cat, b, now=4.0)
        assert state.valid and not state.release_requested
        assert not renew(cat, a, now=4.0).valid
        cat.release_lease(a)  # a stale release does not free B's lease
        assert cat.acquire_lease("u1", "C", TTL, now=5.0) is None

    def test_leases_renew_together_each_to_its_own_state(self, cat: Catalog) -> None:
        mine = lease_on(cat, "u1")
        taken_over = lease_on(cat, "u2")
        newer = lease_on(cat, "u2", holder="B", now=TTL)  # expired: taken over
        asked = lease_on(cat, "u3")
        assert cat.acquire_lease("u3", "B", TTL, now=1.0) is None  # asks A to let go
        gone = lease_on(cat, "u4")
        cat.release_lease(gone)  # no lease row left
        states = cat.renew_leases([taken_over, mine, gone, asked], TTL, now=10.0)
        assert states == [
            LeaseState(valid=False, release_requested=False),
            LeaseState(valid=True, release_requested=False),
            LeaseState(valid=False, release_requested=False),
            LeaseState(valid=True, release_requested=True),
        ]
        # The valid ones last from the renewal; the others are left as they were.
        assert cat.lease_held("u1", now=TTL + 5) and cat.lease_held("u3", now=TTL + 5)
        assert cat.lease_held("u2", now=newer.expires_at - 1)
        assert not cat.lease_held("u4", now=10.0)
        assert (
            cat.renew_leases([newer, mine], TTL, now=11.0)
            == [LeaseState(valid=True, release_requested=False)] * 2
        )

    def test_an_empty_renewal_renews_nothing(self, cat: Catalog) -> None:
        assert cat.renew_leases([], TTL, now=0.0) == []

    def test_a_waiter_asks_only_holders_that_were_there_when_it_arrived(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        a = lease_on(cat)
        assert cat.try_lease("u1", "B", TTL, now=1.0, ask_up_to=a.token - 1) == a.token
        assert not renew(cat, a, now=1.0).release_requested  # newer: not asked
        assert cat.try_lease("u1", "B", TTL, now=1.0, ask_up_to=a.token) == a.token
        assert renew(cat, a, now=1.0).release_requested
        cat.release_lease(a)
        b = cat.try_lease("u1", "B", TTL, now=2.0, ask_up_to=a.token)
        assert isinstance(b, Lease) and b.token > a.token

    def test_the_last_fencing_token_is_the_newest_handed_out(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        before = cat.last_fencing_token()
        a = lease_on(cat)
        assert before < a.token == cat.last_fencing_token()
        cat.release_lease(a)
        assert cat.last_fencing_token() == a.token  # a release hands out none
        b = lease_on(cat, holder="B", now=1.0)
        assert cat.last_fencing_token() == b.token > a.token

    def test_an_expired_lease_is_taken_over(self, cat: Catalog) -> None:
        cat.create_upload(upload(), None)
        a = lease_on(cat)
        b = lease_on(cat, holder="B", now=TTL)  # expires_at <= now: expired
        assert b.token > a.token
        with pytest.raises(LeaseLost):
            cat.commit(a, Progress(0, 10))
        assert not renew(cat, a, now=TTL + 1).valid
        cat.commit(b, Progress(0, 10))
        got = cat.get_upload("u1")
        assert got is not None and got.offset == 10

    def test_an_expired_lease_no_one_took_renews(self, cat: Catalog) -> None:
        a = lease_on(cat)
        assert renew(cat, a, now=100.0).valid
        assert cat.acquire_lease("u1", "B", TTL, now=101.0) is None

    def test_tokens_only_grow(self, cat: Catalog) -> None:
        a1 = lease_on(cat)
        a2 = lease_on(cat, now=1.0)  # the same holder again: a new token
        assert a2.token > a1.token and not renew(cat, a1, now=2.0).valid
        tokens = [a2.token]
        cat.release_lease(a2)
        for i in range(3):
            lease = lease_on(cat, holder=f"H{i}", now=float(i))
            tokens.append(lease.token)
            cat.release_lease(lease)
        cat.forget("u1")
        tokens.append(lease_on(cat, now=10.0).token)  # even after the rows went
        tokens.append(lease_on(cat, "u2").token)  # and across uploads
        assert tokens == sorted(set(tokens))

    def test_one_of_many_racing_handles_wins(self, catalogs: Opener) -> None:
        handles = [catalogs(), catalogs()]
        for round_ in range(20):
            won = race([handles[i % 2] for i in range(4)], f"u{round_}")
            assert len(won) == 4  # every thread got an answer, none failed
            assert len([lease for lease in won if lease is not None]) == 1


def race(handles: list[Catalog], upload_id: str) -> list[Lease | None]:
    """Every handle tries to take the same lease at the same moment, each in a thread."""
    barrier = threading.Barrier(len(handles))
    won: list[Lease | None] = []

    def grab(catalog: Catalog, holder: str) -> None:
        barrier.wait()
        won.append(catalog.acquire_lease(upload_id, holder, TTL, now=0.0))

    threads = [threading.Thread(target=grab, args=(h, f"h{i}")) for i, h in enumerate(handles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


class TestTokensAndLife:
    def test_tokens_name_their_principal(self, cat: Catalog) -> None:
        assert cat.token_count() == 0
        assert cat.principal_for(b"h1") is None
        cat.add_token(b"h1", Principal("alice", "t1"), now=1.0)
        cat.add_token(b"h2", Principal("bob", "t2"), now=2.0)
        assert cat.principal_for(b"h1") == Principal("alice", "t1")
        assert cat.principal_for(b"h2") == Principal("bob", "t2")
        assert cat.token_count() == 2
        cat.check()

    def test_tokens_carry_their_roles(self, cat: Catalog) -> None:
        cat.add_token(b"h1", Principal("root", "t1", frozenset({"admin"})), now=1.0)
        cat.add_token(b"h2", Principal("alice", "t1"), now=2.0)
        got = cat.principal_for(b"h1")
        assert got is not None and got.roles == frozenset({"admin"})
        got = cat.principal_for(b"h2")
        assert got is not None and got.roles == frozenset()

    def test_everything_persists_across_handles(self, catalogs: Opener) -> None:
        first = catalogs()
        first.create_upload(upload(), wrapped())
        lease = lease_on(first)
        first.commit(lease, Progress(0, 10, records=[record(0)], add_piece=TailPiece(0, 0, 0, 10)))
        first.add_token(b"h", Principal("p", "t"), now=0.0)
        before = snapshot(first, "u1")
        first.close()
        second = catalogs()
        second.check()
        assert snapshot(second, "u1") == before
        assert before[1:] == ([record(0)], [TailPiece(0, 0, 0, 10)])
        got = second.get_upload("u1")
        assert got is not None and got.offset == 10
        assert second.principal_for(b"h") == Principal("p", "t")
        second.commit(lease, Progress(10, 20))  # the lease lives on
        assert lease_on(second, "u2").token > lease.token


# -- grants ------------------------------------------------------------------------------


def grant(gid: str, upload_id: str = "u1", *, expires_at: float = 2000.0) -> Grant:
    return Grant(gid, upload_id, "carol", "south", "t1/alice", 1000.0, expires_at)


def test_grants_are_added_listed_while_live_and_revoked(cat: Catalog) -> None:
    cat.create_upload(upload("u1"), wrapped(b"1"))
    cat.create_upload(upload("u2"), wrapped(b"2"))
    assert cat.add_grant(grant("g1"))
    assert cat.add_grant(grant("g2", expires_at=3000.0))
    assert cat.add_grant(grant("g3", "u2"))
    assert cat.grants("u1", now=1500.0) == [grant("g1"), grant("g2", expires_at=3000.0)]
    assert [g.id for g in cat.grants("u1", now=2000.0)] == ["g2"]  # g1 expired
    assert not cat.revoke_grant("u2", "g2")  # another upload's grant
    assert cat.revoke_grant("u1", "g2")
    assert not cat.revoke_grant("u1", "g2")
    assert cat.grants("u1", now=1500.0) == [grant("g1")]
    assert not cat.add_grant(grant("g4", "nope"))  # no such upload
    assert cat.grants("nope", now=0.0) == []


def test_expired_grants_are_dropped_when_the_next_is_added(cat: Catalog) -> None:
    cat.create_upload(upload("u1"), wrapped())
    assert cat.add_grant(grant("old", expires_at=1000.0))
    assert cat.add_grant(grant("new"))
    assert [g.id for g in cat.grants("u1", now=0.0)] == ["new"]


def test_grants_go_with_their_upload(cat: Catalog) -> None:
    cat.create_upload(upload("u1"), wrapped(b"1"))
    cat.create_upload(upload("u2"), wrapped(b"2"))
    cat.add_grant(grant("g1"))
    cat.add_grant(grant("g2", "u2"))
    cat.terminate("u1", None)
    assert cat.grants("u1", now=0.0) == []
    assert not cat.add_grant(grant("g3"))  # terminated: no new grant
    cat.retire("u2")  # a finished partial a final still reads
    assert cat.grants("u2", now=0.0) == []
    cat.forget("u1")
    assert not cat.add_grant(grant("g4"))
    assert cat.grants("u1", now=0.0) == []


def test_a_held_upload_keeps_its_grants(cat: Catalog) -> None:
    cat.create_upload(upload("u1"), wrapped())
    cat.add_grant(grant("g1"))
    cat.place_hold("u1", Hold(None, "root", 1.0))
    with pytest.raises(UploadHeld):
        cat.terminate("u1", None)
    assert [g.id for g in cat.grants("u1", now=0.0)] == ["g1"]


def test_a_revocation_is_seen_at_once_by_every_handle(catalogs: Opener) -> None:
    one, other = catalogs(), catalogs()
    one.create_upload(upload("u1"), wrapped())
    assert one.add_grant(grant("g1"))
    assert [g.id for g in other.grants("u1", now=0.0)] == ["g1"]
    assert other.revoke_grant("u1", "g1")
    assert one.grants("u1", now=0.0) == []


# -- the hooks' outbox -------------------------------------------------------------------


def hook_event(event_id: str = "evt_1", upload_id: str = "u1", at: float = 100.0) -> HookEvent:
    return HookEvent(
        id=event_id,
        type="upload.completed",
        upload_id=upload_id,
        body=json.dumps({"id": event_id}),
        created_at=at,
        targets=("https://a.example/hook", "https://b.example/hook"),
    )


class TestHookOutbox:
    def test_the_event_enters_with_the_completion_and_only_with_it(self, cat: Catalog) -> None:
        cat.create_upload(upload(length=10), wrapped())
        lease = lease_on(cat)
        with pytest.raises(OffsetConflict):
            cat.commit(lease, Progress(3, 10, complete_at=1.0, event=hook_event()))
        assert cat.hook_deliveries() == []  # a refused commit wrote no event
        cat.commit(lease, Progress(0, 10, complete_at=1.0, event=hook_event()))
        rows = cat.hook_deliveries()
        assert [(r.event_id, r.target) for r in rows] == [
            ("evt_1", "https://a.example/hook"),
            ("evt_1", "https://b.example/hook"),
        ]
        first = rows[0]
        assert (first.type, first.upload_id, first.body) == (
            "upload.completed",
            "u1",
            '{"id": "evt_1"}',
        )
        assert (first.attempts, first.next_attempt_at, first.dead, first.last_error) == (
            0,
            100.0,
            False,
            None,
        )
        assert cat.hook_outbox_depth() == (2, 0)

    def test_a_final_created_complete_enters_with_its_row(self, cat: Catalog) -> None:
        final = upload("f1", state=UploadState.COMPLETE, concat="final", partials=("p1",))
        cat.create_upload(final, wrapped(), hook_event(upload_id="f1"))
        assert {r.upload_id for r in cat.hook_deliveries()} == {"f1"}

    def test_a_claimed_row_is_nobody_elses_until_its_claim_ends(self, catalogs: Opener) -> None:
        a, b = catalogs(), catalogs()
        a.create_upload(upload("f1"), wrapped(), hook_event())
        assert a.claim_hook_deliveries("A", now=99.0, claim_for=30.0) == []  # not due yet
        claimed = a.claim_hook_deliveries("A", now=100.0, claim_for=30.0, limit=1)
        assert [c.target for c in claimed] == ["https://a.example/hook"]
        others = b.claim_hook_deliveries("B", now=101.0, claim_for=30.0)
        assert [c.target for c in others] == ["https://b.example/hook"]
        assert b.claim_hook_deliveries("B", now=129.0, claim_for=30.0) == []
        # A crashed: its claim lapses and B takes the row.
        taken = b.claim_hook_deliveries("B", now=130.0, claim_for=30.0)
        assert [c.target for c in taken] == ["https://a.example/hook"]
        # A's late report of a failure changes nothing; B's delivery removes the row.
        assert not a.hook_failed(
            "evt_1", "https://a.example/hook", "A", next_attempt_at=200.0, error="x", dead=False
        )
        b.hook_delivered("evt_1", "https://a.example/hook")
        assert [r.target for r in a.hook_deliveries()] == ["https://b.example/hook"]

    def test_concurrent_claims_never_share_a_row(self, catalogs: Opener) -> None:
        handles = [catalogs() for _ in range(4)]
        for i in range(20):
            handles[0].create_upload(upload(f"f{i}"), wrapped(bytes([i])), hook_event(f"e{i}"))
        claimed: list[list[tuple[str, str]]] = [[] for _ in handles]

        def claim(i: int) -> None:
            while True:
                rows = handles[i].claim_hook_deliveries(f"H{i}", now=500.0, claim_for=60.0, limit=3)
                if not rows:
                    return
                claimed[i].extend((r.event_id, r.target) for r in rows)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(handles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = [row for rows in claimed for row in rows]
        assert len(every) == 40 and len(set(every)) == 40

    def test_failures_back_off_then_die_and_a_retry_revives(self, cat: Catalog) -> None:
        cat.create_upload(upload("f1"), wrapped(), hook_event())
        cat.create_upload(upload("f2"), wrapped(b"2"), hook_event("evt_2", "f2", at=150.0))
        target = "https://a.example/hook"
        (row,) = [r for r in cat.claim_hook_deliveries("A", 100.0, 30.0) if r.target == target]
        assert cat.hook_failed(
            "evt_1", target, "A", next_attempt_at=160.0, error="HTTP 500", dead=False
        )
        again = cat.hook_deliveries(dead=False, limit=1)[0]
        assert (again.attempts, again.next_attempt_at, again.last_error) == (1, 160.0, "HTTP 500")
        early = cat.claim_hook_deliveries("A", 159.0, 30.0)
        assert ("evt_1", target) not in [(r.event_id, r.target) for r in early]
        (row,) = [r for r in cat.claim_hook_deliveries("A", 160.0, 30.0) if r.target == target]
        assert row.attempts == 1
        assert cat.hook_failed(
            "evt_1", target, "A", next_attempt_at=0.0, error="timeout", dead=True
        )
        assert [(r.event_id, r.attempts, r.last_error) for r in cat.hook_deliveries(dead=True)] == [
            ("evt_1", 2, "timeout")
        ]
        assert cat.hook_outbox_depth() == (3, 1)
        assert all(
            r.event_id != "evt_1" or r.target != target
            for r in cat.claim_hook_deliveries("B", 10_000.0, 30.0)
        )
        assert cat.retry_hook_deliveries(20_000.0, "evt_2") == 0  # not dead
        assert cat.retry_hook_deliveries(20_000.0, "evt_1") == 1
        revived = [r for r in cat.hook_deliveries() if r.event_id == "evt_1" and r.target == target]
        assert (revived[0].dead, revived[0].attempts, revived[0].next_attempt_at) == (
            False,
            0,
            20_000.0,
        )
        assert cat.hook_outbox_depth() == (4, 0)

    def test_listing_pages_in_creation_order(self, cat: Catalog) -> None:
        for i in range(3):
            cat.create_upload(upload(f"f{i}"), wrapped(bytes([i])), hook_event(f"e{i}", at=i))
        first = cat.hook_deliveries(limit=4)
        assert [(r.event_id, r.target[8]) for r in first] == [
            ("e0", "a"),
            ("e0", "b"),
            ("e1", "a"),
            ("e1", "b"),
        ]
        last = first[-1]
        rest = cat.hook_deliveries(after=(last.created_at, last.event_id, last.target))
        assert [(r.event_id, r.target[8]) for r in rest] == [("e2", "a"), ("e2", "b")]
        assert cat.retry_hook_deliveries(1.0) == 0
