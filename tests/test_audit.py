"""The audit log (gateway/audit.py, gateway/auditing.py): entries, chain, checkpoints,
verification naming the first bad entry, and appends from several processes at once."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import audit, jws, metrics
from gateway.audit import Actor
from gateway.auditcli import records
from gateway.auditing import Audit
from gateway.auth import mint_token
from gateway.catalog.base import AUDIT_GENESIS, AuditQuery, AuditRecord, Principal, StoredCheckpoint
from gateway.catalog.sqlite import SQLiteCatalog
from gateway.keys.keyring import LocalKeyring
from gateway.manifest import canonical_json
from gateway.runner import Runner
from tests.inprocess import app_client, build_app

ALICE = Actor("alice", "clinic-7", "192.0.2.7", "req-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_772_359_542.0

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


@pytest.fixture
def cat(tmp_path: Path) -> Iterator[SQLiteCatalog]:
    c = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    yield c
    c.close()


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.open(tmp_path / "keyring.json")


def public(keys: LocalKeyring) -> dict[str, jws.PublicSigningKey]:
    return {k.kid: k for k in keys.public_signing_keys()}


def fill(log: Audit, n: int) -> None:
    for i in range(n):
        assert log.record_now(
            audit.UPLOAD_DOWNLOADED, ALICE, f"upload-{i}", details={"range": f"0-{i}", "bytes": i}
        )


def all_records(cat: SQLiteCatalog) -> list[AuditRecord]:
    return list(records(cat, AuditQuery()))


def test_entries_are_canonical_json_chained_by_sha256(cat: SQLiteCatalog) -> None:
    log = Audit(cat, clock=Clock())
    fill(log, 3)
    rows = all_records(cat)
    assert [r.seq for r in rows] == [1, 2, 3]
    first = json.loads(rows[0].entry)
    assert first == {
        "v": 1,
        "seq": 1,
        "time": "2026-03-01T10:05:43.500000Z",
        "action": "upload.downloaded",
        "principal": "alice",
        "tenant": "clinic-7",
        "upload_id": "upload-0",
        "upload_tenant": None,
        "outcome": "ok",
        "code": None,
        "client": "192.0.2.7",
        "request_id": "req-1",
        "details": {"range": "0-0", "bytes": 0},
        "prev": AUDIT_GENESIS,
    }
    for before, after in itertools.pairwise(rows):
        assert canonical_json(json.loads(before.entry)).decode() == before.entry
        assert json.loads(after.entry)["prev"] == hashlib.sha256(before.entry.encode()).hexdigest()
        assert before.hash == json.loads(after.entry)["prev"]
    assert cat.audit_head() == (3, rows[2].hash)


def test_a_refused_action_carries_its_outcome_and_code(cat: SQLiteCatalog) -> None:
    Audit(cat).record_now(
        audit.ACCESS_REFUSED,
        Actor(None, client="198.51.100.1"),
        outcome=audit.REFUSED,
        code="ERR_UNAUTHORIZED",
        details={"attempted": "GET /files/{id}"},
    )
    (row,) = all_records(cat)
    entry = json.loads(row.entry)
    assert (entry["outcome"], entry["code"], entry["principal"]) == (
        "refused",
        "ERR_UNAUTHORIZED",
        None,
    )


@pytest.mark.parametrize(
    "event",
    [
        audit.Event("upload.renamed", ALICE),  # not an action
        audit.Event(audit.UPLOAD_CREATED, ALICE, outcome="maybe"),
        audit.Event(audit.UPLOAD_CREATED, ALICE, details={"filename": "DOE^JOHN.dcm"}),
        audit.Event(audit.UPLOAD_CREATED, ALICE, details={"metadata": "x"}),
        audit.Event(audit.UPLOAD_CREATED, ALICE, details={"range": 1.5}),  # type: ignore[dict-item]
        audit.Event(audit.UPLOAD_CREATED, Actor("x" * 300)),
    ],
)
def test_what_an_entry_may_not_hold_is_refused(event: audit.Event) -> None:
    with pytest.raises(ValueError):
        audit.check(event)


def test_a_failed_append_is_logged_and_counted_never_raised(
    cat: SQLiteCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    before = metrics.AUDIT_FAILURES._value.get()
    cat.close()  # every append now fails
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        ok = Audit(cat).record_now(audit.UPLOAD_CREATED, ALICE, "upload-1")
    assert ok is False
    assert metrics.AUDIT_FAILURES._value.get() == before + 1
    (record,) = caplog.records
    assert record.getMessage().startswith("audit append failed")
    assert record.__dict__["action"] == audit.UPLOAD_CREATED


def test_a_checkpoint_signs_the_head_once(cat: SQLiteCatalog, keys: LocalKeyring) -> None:
    log = Audit(cat, keys=keys, clock=Clock())
    assert log.checkpoint_now() is None  # an empty log has nothing to sign
    fill(log, 4)
    assert log.checkpoint_now() == 4
    assert log.checkpoint_now() is None  # nothing new
    (stored,) = cat.audit_checkpoints()
    assert jws.header_of(stored.jws)["typ"] == "imgw-audit-checkpoint+jws"
    kid, seq, head = audit.verify_checkpoint(stored.jws, public(keys))
    assert (kid, seq, head) == (keys.signing_key().kid, 4, cat.audit_head()[1])
    fill(log, 1)
    assert log.checkpoint_now() == 5
    report = audit.verify(all_records(cat), cat.audit_checkpoints(), public(keys))
    assert report.failure is None
    assert (report.entries, report.checkpoints, report.last_checkpoint) == (5, 2, 5)


def test_the_service_appends_on_the_catalog_thread_and_checkpoints_at_close(
    cat: SQLiteCatalog, keys: LocalKeyring
) -> None:
    runner = Runner(2)

    async def run() -> None:
        log = Audit(cat, keys=keys, runner=runner, checkpoint_seconds=3600)
        log.start()
        assert await log.record(audit.UPLOAD_CREATED, ALICE, "u1")
        assert await log.record(audit.UPLOAD_COMPLETED, ALICE, "u1")
        await log.close()

    try:
        asyncio.run(run())
    finally:
        runner.close()
    assert [c.seq for c in cat.audit_checkpoints()] == [2]


def test_the_timer_checkpoints_at_its_interval(cat: SQLiteCatalog, keys: LocalKeyring) -> None:
    async def run() -> None:
        log = Audit(cat, keys=keys, checkpoint_seconds=0.05)
        log.start()
        log.record_now(audit.UPLOAD_CREATED, ALICE, "u1")
        for _ in range(100):
            if cat.audit_checkpoints():
                break
            await asyncio.sleep(0.02)
        await log.close()

    asyncio.run(run())
    assert [c.seq for c in cat.audit_checkpoints()] == [1]


# --- verification: each kind of tampering names the first bad entry ---------------------------


@pytest.fixture
def signed(
    cat: SQLiteCatalog, keys: LocalKeyring
) -> tuple[list[AuditRecord], list[StoredCheckpoint]]:
    log = Audit(cat, keys=keys, clock=Clock())
    fill(log, 6)
    log.checkpoint_now()
    fill(log, 2)
    return all_records(cat), cat.audit_checkpoints()


def edited(record: AuditRecord, **changes: object) -> AuditRecord:
    document = json.loads(record.entry)
    document.update(changes)
    text = canonical_json(document).decode()
    return dataclasses.replace(record, entry=text, hash=audit.entry_hash(text))


def failure(
    rows: list[AuditRecord], checkpoints: list[StoredCheckpoint], keys: LocalKeyring
) -> audit.Finding:
    report = audit.verify(rows, checkpoints, public(keys))
    assert report.failure is not None
    return report.failure


def test_a_whole_log_verifies(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    report = audit.verify(rows, checkpoints, public(keys))
    assert report.failure is None
    assert (report.entries, report.last_checkpoint) == (8, 6)


def test_an_edited_entry_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    rows[2] = edited(rows[2], upload_id="someone-else")
    rows[2] = dataclasses.replace(rows[2], upload_id="someone-else")
    assert failure(rows, checkpoints, keys).seq == 3


def test_a_deleted_entry_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    del rows[3]
    assert failure(rows, checkpoints, keys).seq == 4
    renumbered = [*rows[:3], *(dataclasses.replace(r, seq=r.seq - 1) for r in rows[3:])]
    assert failure(renumbered, checkpoints, keys).seq == 4


def test_reordered_entries_are_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    a, b = rows[1], rows[2]
    rows[1], rows[2] = dataclasses.replace(b, seq=2), dataclasses.replace(a, seq=3)
    assert failure(rows, checkpoints, keys).seq == 2


def test_an_inserted_entry_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    forged = edited(rows[1], seq=3, prev=rows[1].hash, action=audit.HOLD_LIFTED)
    forged = dataclasses.replace(forged, seq=3, action=audit.HOLD_LIFTED)
    shifted = [dataclasses.replace(r, seq=r.seq + 1) for r in rows[2:]]
    assert failure([*rows[:2], forged, *shifted], checkpoints, keys).seq == 3


def test_a_rewritten_chain_is_caught_by_the_checkpoint(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    # An insider edits entry 2 and recomputes every hash after it: the chain is whole
    # again, but the signed checkpoint at 6 no longer matches it.
    prev = rows[0].hash
    rewritten = [rows[0]]
    for i, row in enumerate(rows[1:], start=2):
        row = edited(row, prev=prev, **({"principal": "mallory"} if i == 2 else {}))
        if i == 2:
            row = dataclasses.replace(row, principal="mallory")
        rewritten.append(row)
        prev = row.hash
    found = failure(rewritten, checkpoints, keys)
    assert found.seq == 1 and "entries 1 to 6" in found.message


def test_a_tail_truncated_before_the_last_checkpoint_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    found = failure(rows[:4], checkpoints, keys)
    assert found.seq == 5 and "entries 5 to 6 were removed" in found.message
    # After the last checkpoint only the chain protects the entries: not detectable.
    assert audit.verify(rows[:7], checkpoints, public(keys)).failure is None


def test_a_forged_or_foreign_checkpoint(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring, tmp_path: Path
) -> None:
    rows, checkpoints = signed
    (real,) = checkpoints
    header, payload, signature = real.jws.split(".")
    bad = dataclasses.replace(real, jws=f"{header}.{payload}.{signature[:-4]}AAAA")
    assert "bad signature" in failure(rows, [bad], keys).message
    other = LocalKeyring.open(tmp_path / "other.json")
    foreign = StoredCheckpoint(
        6, real.issued_at, audit.sign_checkpoint(6, rows[5].hash, 0, other.signing_key())
    )
    report = audit.verify(rows, [foreign], public(keys))
    assert report.failure is None and report.last_checkpoint is None
    assert report.unverifiable and "unknown kid" in report.unverifiable[0]
    receipt_typ = jws.sign(b"{}", typ="imgw-deletion-receipt+jws", key=keys.signing_key())
    assert "wrong typ" in failure(rows, [dataclasses.replace(real, jws=receipt_typ)], keys).message


def test_a_row_whose_columns_disagree_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    rows[4] = dataclasses.replace(rows[4], principal="mallory")  # what GET /audit filters on
    assert failure(rows, checkpoints, keys).seq == 5


def test_times_are_parsed_to_the_stored_form() -> None:
    assert audit.parse_time("2026-03-01T10:05:43Z") == "2026-03-01T10:05:43.000000Z"
    assert audit.parse_time("2026-03-01T11:05:43+01:00") == "2026-03-01T10:05:43.000000Z"
    for bad in ("2026-03-01T10:05:43", "yesterday", ""):
        with pytest.raises(ValueError):
            audit.parse_time(bad)


# --- several processes append to one catalog -------------------------------------------------


def _append_many(path: str, worker: int, n: int) -> None:
    catalog = SQLiteCatalog(path)
    try:
        log = Audit(catalog)
        for i in range(n):
            assert log.record_now(
                audit.UPLOAD_CREATED, Actor(f"worker-{worker}"), f"u-{worker}-{i}"
            )
    finally:
        catalog.close()


def test_processes_appending_at_once_never_fork_the_chain(
    tmp_path: Path, keys: LocalKeyring
) -> None:
    path = tmp_path / "catalog.sqlite3"
    SQLiteCatalog(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 40)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    cat = SQLiteCatalog(path)
    try:
        rows = all_records(cat)
        assert [r.seq for r in rows] == list(range(1, 161))
        assert audit.verify(rows, [], public(keys)).failure is None
    finally:
        cat.close()


def test_a_request_succeeds_when_its_entry_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, bearer = build_app(tmp_path / "data")
    headers = {"Authorization": f"Bearer {bearer}", "Tus-Resumable": "1.0.0"}
    before = metrics.AUDIT_FAILURES._value.get()
    with app_client(app) as client, caplog.at_level(logging.ERROR, logger="gateway.audit"):
        conn = sqlite3.connect(tmp_path / "data" / "catalog.sqlite3")
        with conn:
            conn.execute("DROP TABLE audit_log")  # every append fails from now on
        conn.close()
        created = client.post("/files/", headers={**headers, "Upload-Length": "3"})
        assert created.status_code == 201
        url = created.headers["Location"]
        patch_headers = {
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        }
        assert client.patch(url, content=b"abc", headers=patch_headers).status_code == 204
        got = client.get(url, headers=headers)
        assert (got.status_code, got.content) == (200, b"abc")
    # created, completed, downloaded; then the shutdown checkpoint finds no head
    assert metrics.AUDIT_FAILURES._value.get() >= before + 3
    failed = [r for r in caplog.records if r.getMessage().startswith("audit append failed")]
    assert [r.__dict__["action"] for r in failed] == [
        "upload.created",
        "upload.completed",
        "upload.downloaded",
    ]


def test_an_entry_whose_seq_is_not_an_integer_is_named(
    signed: tuple[list[AuditRecord], list[StoredCheckpoint]], keys: LocalKeyring
) -> None:
    rows, checkpoints = signed
    rows[0] = edited(rows[0], seq=True)  # true == 1 in Python, not in the format
    assert failure(rows, checkpoints, keys).seq == 1


def test_refusals_name_what_was_attempted(tmp_path: Path) -> None:
    app, bearer = build_app(tmp_path / "data")
    catalog = SQLiteCatalog(tmp_path / "data" / "catalog.sqlite3")
    mallory = mint_token(catalog, Principal("mallory", "default"))
    owner = {"Authorization": f"Bearer {bearer}", "Tus-Resumable": "1.0.0"}
    other = {**owner, "Authorization": f"Bearer {mallory}"}
    try:
        with app_client(app) as client:
            url = client.post("/files/", headers={**owner, "Upload-Length": "3"}).headers[
                "Location"
            ]
            uid = url.rsplit("/", 1)[1]
            assert client.head(url, headers=other).status_code == 404
            override = {
                **other,
                "X-HTTP-Method-Override": "PATCH",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            }
            assert client.post(url, headers=override).status_code == 404
            assert client.delete(url, headers=other).status_code == 404
            assert client.get(f"/admin/holds/{uid}", headers=other).status_code == 403
            assert client.head(url, headers={"Tus-Resumable": "1.0.0"}).status_code == 401
        entries = [json.loads(r.entry) for r in all_records(catalog)]
    finally:
        catalog.close()
    assert [(e["action"], e["principal"], e["details"]) for e in entries] == [
        ("upload.created", "admin", {}),
        ("access.refused", "mallory", {"attempted": "HEAD /files/{id}"}),
        ("access.refused", "mallory", {"attempted": "PATCH /files/{id}"}),
        ("access.refused", "mallory", {"attempted": "upload.deleted"}),
        ("access.refused", "mallory", {"attempted": "GET /admin/holds/{id}"}),
    ]
    # The admin API checks the role before it looks at the upload id.
    assert [e["upload_id"] for e in entries] == [uid, uid, uid, uid, None]
    assert [e["code"] for e in entries[1:]] == ["ERR_UPLOAD_NOT_FOUND"] * 3 + ["ERR_FORBIDDEN"]


def test_a_tenant_sees_what_its_principals_did_and_what_was_done_to_its_uploads(
    cat: SQLiteCatalog,
) -> None:
    log = Audit(cat)
    consultant = Actor("dr-who", "outside-clinic")
    log.record_now(audit.UPLOAD_CREATED, ALICE, "u1", upload_tenant="clinic-7")
    log.record_now(audit.UPLOAD_DOWNLOADED, consultant, "u1", upload_tenant="clinic-7")
    log.record_now(audit.UPLOAD_CREATED, consultant, "u2", upload_tenant="outside-clinic")
    log.record_now(audit.ACCESS_REFUSED, consultant, "u3", outcome=audit.REFUSED)

    def seqs(tenant: str) -> list[int]:
        return [r.seq for r in cat.audit_records(AuditQuery(tenant=tenant))]

    assert seqs("clinic-7") == [1, 2]
    assert seqs("outside-clinic") == [2, 3, 4]
    (row,) = cat.audit_records(AuditQuery(after=1, limit=1))
    assert (row.upload_tenant, json.loads(row.entry)["upload_tenant"]) == ("clinic-7", "clinic-7")
