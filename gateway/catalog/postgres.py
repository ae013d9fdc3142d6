"""The PostgreSQL catalog: every upload's durable state in a database many gateways share.

Same promises as the SQLite catalog (gateway/catalog/sqlite.py), kept with PostgreSQL's
own means: row locks (SELECT ... FOR UPDATE) where SQLite has its one write lock,
transaction-level advisory locks where no row exists yet to lock (a lease being taken,
the audit log's head), and a SEQUENCE for fencing tokens. Connections come from a
psycopg-pool pool; each call is one short transaction on one of them. Here: uploads,
removal and holds; leases, grants and API keys in postgres_access.py, the audit log in
postgres_audit.py (on audit_sql.py, shared with SQLite, as is keys_sql.py for key
rotation), the hooks' outbox in postgres_hooks.py, the pool in postgres_db.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gateway.catalog.base import (
    Deletion,
    Hold,
    HookEvent,
    Lease,
    LeaseLost,
    OffsetConflict,
    Progress,
    RecordRow,
    StoredReceipt,
    TailPiece,
    Upload,
    UploadHeld,
    UploadState,
)
from gateway.catalog.keys_sql import KeyRotationSQL
from gateway.catalog.postgres_access import PostgresAccess
from gateway.catalog.postgres_audit import PostgresAuditLog
from gateway.catalog.postgres_db import Cursor
from gateway.catalog.postgres_hooks import PostgresHookOutbox, add_event
from gateway.keys.base import WrappedKey

_UPLOAD_FIELDS = tuple(f.name for f in fields(Upload) if f.name != "legacy_metadata")
_COLUMN_OF = {"offset": "upload_offset", "partials": "parts"}
_UPLOAD_COLUMNS = ", ".join(_COLUMN_OF.get(n, n) for n in _UPLOAD_FIELDS)


class PostgresCatalog(PostgresAccess, PostgresAuditLog, PostgresHookOutbox, KeyRotationSQL):
    """A `Catalog` in a PostgreSQL database (a `postgresql://` URL); safe to share
    between threads. The schema is created on first use."""

    # uploads

    def create_upload(
        self, upload: Upload, wrapped: WrappedKey | None, event: HookEvent | None = None
    ) -> None:
        if upload.legacy_metadata is not None:
            raise ValueError("plain-text metadata is never written to the catalog")
        values = [getattr(upload, name) for name in _UPLOAD_FIELDS]
        values[_UPLOAD_FIELDS.index("partials")] = list(upload.partials)
        values[_UPLOAD_FIELDS.index("state")] = str(upload.state)
        marks = ", ".join(["%s"] * len(values))
        with self._tx() as cur:
            cur.execute(f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES ({marks})", values)
            if wrapped is not None:
                _insert_key(cur, upload.dek_id, upload.id, wrapped)
            add_event(cur, event)

    def get_upload(self, upload_id: str) -> Upload | None:
        rows = self._query(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = %s", (upload_id,))
        return _upload_from(rows[0]) if rows else None

    def records(self, upload_id: str) -> list[RecordRow]:
        rows = self._query(
            "SELECT idx, plaintext_len, final, size, sha256, etag FROM records "
            "WHERE upload_id = %s ORDER BY idx",
            (upload_id,),
        )
        return [RecordRow(*r) for r in rows]

    def tail_pieces(self, upload_id: str) -> list[TailPiece]:
        rows = self._query(
            "SELECT segment, piece, start, length FROM tail_pieces "
            "WHERE upload_id = %s ORDER BY segment, piece",
            (upload_id,),
        )
        return [TailPiece(*r) for r in rows]

    def wrapped_key(self, dek_id: bytes) -> WrappedKey | None:
        rows = self._query(
            "SELECT kek_id, kek_version, blob FROM wrapped_keys WHERE dek_id = %s", (dek_id,)
        )
        if not rows:
            return None
        kek_id, version, blob = rows[0]
        return WrappedKey(kek_id=kek_id, kek_version=version, blob=bytes(blob))

    def commit(self, lease: Lease, progress: Progress) -> None:
        uid = lease.upload_id
        with self._tx() as cur:
            # The lease row stays locked to the end: a takeover (acquire_lease) or a
            # terminate waits for this commit, or this commit sees their result.
            row = cur.execute(
                "SELECT holder, token FROM leases WHERE upload_id = %s FOR UPDATE", (uid,)
            ).fetchone()
            if row is None or row[0] != lease.holder or row[1] != lease.token:
                raise LeaseLost(uid)
            up = cur.execute(
                "SELECT upload_offset, state FROM uploads WHERE id = %s FOR UPDATE", (uid,)
            ).fetchone()
            if up is None or up[1] != UploadState.ACTIVE:
                raise LeaseLost(uid)
            if up[0] != progress.expected_offset:
                raise OffsetConflict(f"{uid}: offset is {up[0]}, not {progress.expected_offset}")
            if progress.records:
                cur.executemany(
                    "INSERT INTO records (upload_id, idx, plaintext_len, final, size, sha256, "
                    "etag) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id, idx) "
                    "DO UPDATE SET plaintext_len = excluded.plaintext_len, "
                    "final = excluded.final, size = excluded.size, sha256 = excluded.sha256, "
                    "etag = excluded.etag",
                    [
                        (uid, r.index, r.plaintext_len, r.final, r.size, r.sha256, r.etag)
                        for r in progress.records
                    ],
                )
            p = progress.add_piece
            if p is not None:
                cur.execute(
                    "INSERT INTO tail_pieces (upload_id, segment, piece, start, length) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (upload_id, segment, piece) "
                    "DO UPDATE SET start = excluded.start, length = excluded.length",
                    (uid, p.segment, p.piece, p.start, p.length),
                )
            if progress.drop_pieces:
                cur.executemany(
                    "DELETE FROM tail_pieces WHERE upload_id = %s AND segment = %s AND piece = %s",
                    [(uid, d.segment, d.piece) for d in progress.drop_pieces],
                )
            if progress.drop_pieces_below is not None:
                cur.execute(
                    "DELETE FROM tail_pieces WHERE upload_id = %s AND segment < %s",
                    (uid, progress.drop_pieces_below),
                )
            cur.execute(
                "UPDATE uploads SET upload_offset = %s, "
                "expires_at = COALESCE(%s, expires_at), checksum = COALESCE(%s, checksum), "
                "state = CASE WHEN %s::float8 IS NULL THEN state ELSE %s END, "
                "completed_at = COALESCE(%s, completed_at) WHERE id = %s",
                (
                    progress.offset,
                    progress.expires_at,
                    progress.checksum,
                    progress.complete_at,
                    str(UploadState.COMPLETE),
                    progress.complete_at,
                    uid,
                ),
            )
            add_event(cur, progress.event)

    def set_length(self, upload_id: str, length: int) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET length = %s WHERE id = %s AND length IS NULL",
                (length, upload_id),
            )

    def legacy_metadata(self, after: str = "", limit: int = 100) -> list[Upload]:
        # Plain-text metadata predates this catalog: none was ever written here.
        return []

    def seal_legacy_metadata(self, sealed: Sequence[tuple[Upload, WrappedKey | None]]) -> int:
        if any(upload.legacy_metadata is not None for upload, _ in sealed):
            raise ValueError("plain-text metadata is never written to the catalog")
        return 0  # no row is plain (legacy_metadata), so none changes

    def open_uploads(self, owner: str, tenant: str) -> tuple[int, int]:
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(COALESCE(length, upload_offset)), 0) FROM uploads "
            "WHERE tenant = %s AND owner = %s AND state = %s",
            (tenant, owner, str(UploadState.ACTIVE)),
        )
        return int(rows[0][0]), int(rows[0][1])

    def expired(self, now: float, limit: int = 100) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE state = %s AND expires_at IS NOT NULL "
            "AND expires_at <= %s AND NOT held ORDER BY expires_at LIMIT %s",
            (str(UploadState.ACTIVE), now, limit),
        )
        return [str(r[0]) for r in rows]

    # removal

    def terminate(self, upload_id: str, deletion: Deletion | None = None) -> None:
        with self._tx() as cur:
            _refuse_held(cur, upload_id)
            if deletion is not None:
                # The first request recorded is the one the receipt names.
                cur.execute(
                    "INSERT INTO deletions (upload_id, requested_at, reason, deleted_by, "
                    "manifest_sha256, dek_id, kek_id, kek_version) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id) DO NOTHING",
                    (
                        upload_id,
                        deletion.requested_at,
                        deletion.reason,
                        Jsonb(dict(deletion.deleted_by)),
                        deletion.manifest_sha256,
                        deletion.dek_id,
                        deletion.kek_id,
                        deletion.kek_version,
                    ),
                )
            cur.execute(
                "UPDATE uploads SET state = %s WHERE id = %s",
                (str(UploadState.TERMINATED), upload_id),
            )
            for table in ("wrapped_keys", "grants", "leases"):
                cur.execute(f"DELETE FROM {table} WHERE upload_id = %s", (upload_id,))

    def shred(self, upload_id: str) -> bool:
        """VACUUM the key table, so that no tuple of it, live or dead, holds a deleted
        key any more; False while one cannot be removed yet (a transaction somewhere
        still has an older snapshot): call again later.

        Weaker than SQLite's shredding, and PostgreSQL offers nothing stronger: VACUUM
        frees a dead tuple's space without zeroing it (the bytes stay in the page until
        overwritten), and the WAL, its archive, replicas and base backups keep their
        copies until they are recycled or expire. Protect those as key material.
        """
        rows = self._query("SELECT dek_id FROM uploads WHERE id = %s", (upload_id,))
        if not rows or not rows[0][0]:
            return True  # never had a key (a final upload), or already forgotten
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            # VACUUM cannot run in a transaction block, hence a connection of its own.
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute("VACUUM (DISABLE_PAGE_SKIPPING) wrapped_keys")
            except psycopg.errors.LockNotAvailable:
                return False  # another VACUUM of the table: try later
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'wrapped_keys'::regclass"
            ).fetchone()
        return row is not None and int(row[0]) == 0

    def removals_pending(self, limit: int = 100) -> list[str]:
        # Terminated without a key: a retired partial keeps its key until it is removed.
        rows = self._query(
            "SELECT id FROM uploads WHERE state = %s AND NOT EXISTS "
            "(SELECT 1 FROM wrapped_keys WHERE wrapped_keys.upload_id = uploads.id) LIMIT %s",
            (str(UploadState.TERMINATED), limit),
        )
        return [str(r[0]) for r in rows]

    def retire(self, upload_id: str) -> None:
        with self._tx() as cur:
            _refuse_held(cur, upload_id)
            cur.execute(
                "UPDATE uploads SET state = %s WHERE id = %s",
                (str(UploadState.TERMINATED), upload_id),
            )
            cur.execute("DELETE FROM grants WHERE upload_id = %s", (upload_id,))

    def finals_using(self, upload_id: str) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE concat LIKE 'final%%' AND state <> %s "
            "AND parts @> ARRAY[%s]::text[]",
            (str(UploadState.TERMINATED), upload_id),
        )
        return [str(r[0]) for r in rows]

    def retention_due(self, completed_before: float, limit: int = 100) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE state = %s AND completed_at IS NOT NULL "
            "AND completed_at <= %s AND NOT held ORDER BY completed_at, id LIMIT %s",
            (str(UploadState.COMPLETE), completed_before, limit),
        )
        return [str(r[0]) for r in rows]

    def deletion(self, upload_id: str) -> Deletion | None:
        rows = self._query(
            "SELECT requested_at, reason, deleted_by, manifest_sha256, dek_id, kek_id, "
            "kek_version FROM deletions WHERE upload_id = %s",
            (upload_id,),
        )
        if not rows:
            return None
        at, reason, by, digest, dek_id, kek_id, kek_version = rows[0]
        return Deletion(
            upload_id=upload_id,
            requested_at=float(at),
            reason=str(reason),
            deleted_by=dict(by),
            manifest_sha256=digest,
            dek_id=bytes(dek_id),
            kek_id=kek_id,
            kek_version=kek_version,
        )

    def forget(self, upload_id: str, receipt: StoredReceipt | None = None) -> None:
        with self._tx() as cur:
            _lock_upload(cur, upload_id)
            tables = ("records", "tail_pieces", "wrapped_keys", "leases", "deletions", "grants")
            for table in tables:
                cur.execute(f"DELETE FROM {table} WHERE upload_id = %s", (upload_id,))
            cur.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
            if receipt is not None:
                cur.execute(
                    "INSERT INTO deletion_receipts (upload_id, issued_at, jws) "
                    "VALUES (%s, %s, %s) ON CONFLICT (upload_id) DO NOTHING",
                    (receipt.upload_id, receipt.issued_at, receipt.jws),
                )

    def receipt(self, upload_id: str) -> StoredReceipt | None:
        rows = self._query(
            "SELECT issued_at, jws FROM deletion_receipts WHERE upload_id = %s", (upload_id,)
        )
        if not rows:
            return None
        return StoredReceipt(upload_id=upload_id, issued_at=float(rows[0][0]), jws=str(rows[0][1]))

    # legal holds

    def place_hold(self, upload_id: str, hold: Hold) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET held = TRUE, hold_case = %s, hold_by = %s, hold_at = %s "
                "WHERE id = %s AND state <> %s",
                (
                    hold.case,
                    hold.placed_by,
                    hold.placed_at,
                    upload_id,
                    str(UploadState.TERMINATED),
                ),
            )
            return cur.rowcount == 1

    def release_hold(self, upload_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET held = FALSE, hold_case = NULL, hold_by = NULL, "
                "hold_at = NULL WHERE id = %s AND held",
                (upload_id,),
            )
            return cur.rowcount == 1

    def hold(self, upload_id: str) -> Hold | None:
        rows = self._query(
            "SELECT hold_case, hold_by, hold_at FROM uploads WHERE id = %s AND held", (upload_id,)
        )
        if not rows:
            return None
        case, by, at = rows[0]
        return Hold(case=case, placed_by=str(by), placed_at=float(at))


def _insert_key(cur: Cursor, dek_id: bytes, upload_id: str, wrapped: WrappedKey) -> None:
    cur.execute(
        "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
        "VALUES (%s, %s, %s, %s, %s)",
        (dek_id, upload_id, wrapped.kek_id, wrapped.kek_version, wrapped.blob),
    )


def _upload_from(values: Sequence[Any]) -> Upload:
    row = dict(zip(_UPLOAD_FIELDS, values, strict=True))
    row["partials"] = tuple(row["partials"])
    row["state"] = UploadState(row["state"])
    return Upload(**row)


def _lock_upload(cur: Cursor, upload_id: str) -> bool:
    """Lock the upload's lease row (if any), then its row, in the order `commit` takes
    them (the opposite order could deadlock with a commit); whether it is held."""
    cur.execute("SELECT 1 FROM leases WHERE upload_id = %s FOR UPDATE", (upload_id,))
    row = cur.execute("SELECT held FROM uploads WHERE id = %s FOR UPDATE", (upload_id,)).fetchone()
    return row is not None and bool(row[0])


def _refuse_held(cur: Cursor, upload_id: str) -> None:
    if _lock_upload(cur, upload_id):
        raise UploadHeld(upload_id)
