"""The PostgreSQL catalog: every upload's durable state in a database many gateways share.

Same promises as the SQLite catalog (gateway/catalog/sqlite.py), kept with PostgreSQL's
own means: row locks (SELECT ... FOR UPDATE) where SQLite has its one write lock,
transaction-level advisory locks where no row exists yet to lock (a lease being taken,
the audit log's head), and a SEQUENCE for fencing tokens. Connections come from a
psycopg-pool pool; each call is one short transaction on one of them. Here: a commit's
checks and the row locks of an upload, how lists and JSON are stored, shredding
(VACUUM), finals by partial. The rest is SQL both catalogs run
(uploads_sql.py, removal_sql.py, access_sql.py, audit_sql.py, keys_sql.py,
hooks_sql.py); leases and a grant's lock in postgres_access.py, the audit log's lock in
postgres_audit.py, claiming hook deliveries in postgres_hooks.py, the pool in
postgres_db.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gateway.catalog.base import Lease, Progress, Upload, UploadState
from gateway.catalog.keys_sql import KeyRotationSQL
from gateway.catalog.portable import Cursor
from gateway.catalog.postgres_access import PostgresAccess
from gateway.catalog.postgres_audit import PostgresAuditLog
from gateway.catalog.postgres_hooks import PostgresHookOutbox
from gateway.catalog.removal_sql import RemovalSQL
from gateway.catalog.uploads_sql import UploadsSQL, check_lease, check_offset
from gateway.keys.base import WrappedKey


class PostgresCatalog(
    UploadsSQL,
    RemovalSQL,
    PostgresAccess,
    PostgresAuditLog,
    PostgresHookOutbox,
    KeyRotationSQL,
):
    """A `Catalog` in a PostgreSQL database (a `postgresql://` URL); safe to share
    between threads. The schema is created on first use."""

    # Partials' ids are a text[], a deletion's deleted_by jsonb.

    def _parts_value(self, partials: tuple[str, ...]) -> object:
        return list(partials)

    def _parts_from(self, value: Any) -> tuple[str, ...]:
        return tuple(value)

    def _json_value(self, value: Mapping[str, Any]) -> object:
        return Jsonb(dict(value))

    def _json_from(self, value: Any) -> dict[str, Any]:
        return dict(value)

    # uploads

    def commit(self, lease: Lease, progress: Progress) -> None:
        uid = lease.upload_id
        with self._tx() as cur:
            # The lease row stays locked to the end: a takeover (acquire_lease) or a
            # terminate waits for this commit, or this commit sees their result.
            row = cur.execute(
                "SELECT holder, token FROM leases WHERE upload_id = %s FOR UPDATE", (uid,)
            ).fetchone()
            check_lease(row, lease)
            up = cur.execute(
                "SELECT upload_offset, state FROM uploads WHERE id = %s FOR UPDATE", (uid,)
            ).fetchone()
            check_offset(up, uid, progress)
            self._write_progress(cur, uid, progress)

    def legacy_metadata(self, after: str = "", limit: int = 100) -> list[Upload]:
        # Plain-text metadata predates this catalog: none was ever written here.
        return []

    def seal_legacy_metadata(self, sealed: Sequence[tuple[Upload, WrappedKey | None]]) -> int:
        if any(upload.legacy_metadata is not None for upload, _ in sealed):
            raise ValueError("plain-text metadata is never written to the catalog")
        return 0  # no row is plain (legacy_metadata), so none changes

    # removal

    def _lock_upload(self, cur: Cursor, upload_id: str) -> bool:
        """Lock the upload's lease row (if any), then its row, in the order `commit`
        takes them (the opposite order could deadlock with a commit); whether it is
        held."""
        cur.execute("SELECT 1 FROM leases WHERE upload_id = %s FOR UPDATE", (upload_id,))
        row = cur.execute(
            "SELECT held FROM uploads WHERE id = %s FOR UPDATE", (upload_id,)
        ).fetchone()
        return row is not None and bool(row[0])

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

    def finals_using(self, upload_id: str) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE concat LIKE 'final%%' AND state <> %s "
            "AND parts @> ARRAY[%s]::text[]",
            (str(UploadState.TERMINATED), upload_id),
        )
        return [str(r[0]) for r in rows]
