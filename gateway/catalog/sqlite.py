"""The SQLite catalog: one WAL-mode database file holding every upload's durable state.

Here: the connection and its transactions (BEGIN IMMEDIATE: the database's one write
lock), a commit's checks, plain-text metadata of version 1 catalogs, the keys a
termination deleted and their shredding, finals by partial. The rest is SQL both catalogs run
(uploads_sql.py, removal_sql.py, access_sql.py, audit_sql.py, keys_sql.py,
hooks_sql.py); leases in sqlite_leases.py, claiming hook deliveries in sqlite_hooks.py,
the file itself in sqlite_files.py, the schema in sqlite_schema.py.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.catalog.access_sql import AccessSQL
from gateway.catalog.audit_sql import AuditLogSQL
from gateway.catalog.base import (
    CatalogFull,
    Lease,
    Progress,
    StoredReceipt,
    Upload,
    UploadState,
)
from gateway.catalog.keys_sql import KeyRotationSQL
from gateway.catalog.portable import Cursor
from gateway.catalog.removal_sql import RemovalSQL
from gateway.catalog.sqlite_files import DatabaseFile
from gateway.catalog.sqlite_hooks import SQLiteHookOutbox
from gateway.catalog.sqlite_leases import SQLiteLeases, resume_fencing
from gateway.catalog.sqlite_schema import WRAPPED_KEYS, WRAPPED_KEYS_INDEX, migrate
from gateway.catalog.uploads_sql import UPLOAD_COLUMNS, UploadsSQL, check_lease, check_offset
from gateway.keys.base import WrappedKey


class SQLiteCatalog(
    UploadsSQL,
    RemovalSQL,
    SQLiteLeases,
    AccessSQL,
    AuditLogSQL,
    SQLiteHookOutbox,
    KeyRotationSQL,
):
    """A `Catalog` on one SQLite file; safe to share between threads."""

    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = 5000, migrate: bool = True
    ) -> None:
        """Open (or create) the catalog at `path`. Without `migrate`, a schema older
        than this gateway's raises SchemaMismatch instead of being upgraded."""
        # Autocommit mode (isolation_level=None): transactions are begun explicitly so
        # that every write takes the database write lock up front (BEGIN IMMEDIATE).
        # `timeout` is SQLite's busy_timeout: how long to wait for another writer.
        self._file = DatabaseFile.hold(Path(path))
        try:
            self._conn = sqlite3.connect(
                str(path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except BaseException:
            self._file.release()
            raise
        self._busy_timeout_ms = busy_timeout_ms
        self._closed = False
        self._lock = threading.Lock()
        # Wrapped keys deleted by `terminate` whose bytes `shred` has not yet verified
        # gone from the files, by upload id.
        self._shredding: dict[str, list[bytes]] = {}
        self.schema_change = (0, 0)  # the schema's versions before and after opening
        try:
            self._setup(migrate)
        except BaseException:
            self._conn.close()
            self._file.release()
            raise

    def _setup(self, apply: bool) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        # The catalog is what makes an offset durable: fsync the WAL on every commit.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Deleted cells and freed pages are zeroed on disk (not all that a page
        # rebalance leaves behind: `shred` sees to that for wrapped keys).
        conn.execute("PRAGMA secure_delete = ON")
        # Statement journals hold old page images (keys among them): never in temp files.
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._tx() as cur:
            self.schema_change = migrate(cur, apply=apply)
            resume_fencing(cur)

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One write transaction; any exception rolls everything back.

        `durable=False` skips the fsync of this commit (lease bookkeeping: a lease lost
        to a power cut is harmless); the next durable commit makes it durable anyway.
        """
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._locked_tx() as cur:
                    yield cur
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _locked_tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise CatalogFull("the catalog's disk is full") from exc
            raise
        finally:
            cur.close()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # uploads

    def commit(self, lease: Lease, progress: Progress) -> None:
        uid = lease.upload_id
        with self._tx() as cur:
            q = "SELECT holder, token FROM leases WHERE upload_id = ?"
            check_lease(cur.execute(q, (uid,)).fetchone(), lease)
            q = "SELECT upload_offset, state FROM uploads WHERE id = ?"
            check_offset(cur.execute(q, (uid,)).fetchone(), uid, progress)
            self._write_progress(cur, uid, progress)

    def legacy_metadata(self, after: str = "", limit: int = 100) -> list[Upload]:
        # A sealed value is a BLOB; a TEXT value was written in plain text by version 1.
        rows = self._query(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE typeof(metadata) = 'text' "
            "AND id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [self._upload_from(row) for row in rows]

    def seal_legacy_metadata(self, sealed: Sequence[tuple[Upload, WrappedKey | None]]) -> int:
        changed = 0
        with self._tx() as cur:
            for upload, wrapped in sealed:
                if upload.legacy_metadata is not None:
                    raise ValueError("plain-text metadata is never written to the catalog")
                cur.execute(
                    "UPDATE uploads SET metadata = ?, header = ?, dek_id = ? "
                    "WHERE id = ? AND typeof(metadata) = 'text'",
                    (upload.metadata, upload.header, upload.dek_id, upload.id),
                )
                if cur.rowcount != 1:
                    continue
                changed += 1
                if wrapped is not None:
                    self._insert_key(cur, upload.dek_id, upload.id, wrapped)
        if changed:
            # secure_delete zeroed the old values in the database file; the WAL may
            # still hold page images with them until a checkpoint truncates it (best
            # effort: a busy checkpoint only delays that to a later one).
            with self._lock:
                self._checkpoint()
        return changed

    # removal

    def _terminate_rows(self, cur: Cursor, upload_id: str) -> None:
        """`terminate`'s, the wrapped keys' bytes kept first for `shred` to look for."""
        rows = cur.execute("SELECT blob FROM wrapped_keys WHERE upload_id = ?", (upload_id,))
        blobs = [bytes(row[0]) for row in rows.fetchall()]
        super()._terminate_rows(cur, upload_id)
        if blobs or upload_id not in self._shredding:  # a second call finds no row
            self._shredding[upload_id] = blobs

    def shred(self, upload_id: str) -> bool:
        """Make the key `terminate` deleted unrecoverable from the catalog's files.

        The row is gone, but its bytes may still be in WAL frames (written by every
        commit that touched its page since the last checkpoint) and in the database
        file, in unused space of a page: secure_delete zeroes deleted cells and freed
        pages, not what a page rebalance left behind. So: checkpoint and truncate the
        WAL, then look for the bytes; if found (or unknown, after a restart or when
        another process terminated the upload), rebuild the key table, which frees and
        so zeroes every page it had. False while a reader (in any process) still uses
        the WAL: it may need the old pages, so nothing can be erased yet.
        """
        with self._lock:
            blobs = self._shredding.get(upload_id)
            if blobs is None:
                row = self._conn.execute(
                    "SELECT dek_id FROM uploads WHERE id = ?", (upload_id,)
                ).fetchone()
                if row is None or not row[0]:
                    return True  # never had a key (a final upload), or already forgotten
            elif not blobs:
                return True
            if not self._checkpoint():
                return False
        # The search reads the whole file: others may use the catalog meanwhile. Their
        # writes cannot bring the key back, nor move a stale copy out of its page.
        if blobs is None or self._file.contains(blobs):
            with self._lock:
                self._rebuild_wrapped_keys()
                if not self._checkpoint():
                    return False
            if blobs is not None and self._file.contains(blobs):
                raise RuntimeError("a deleted wrapped key is still in the catalog's files")
        self._shredding.pop(upload_id, None)
        return True

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it, without waiting (the
        caller retries): False if a reader or writer elsewhere is in the way."""
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:
            return False
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return int(busy) == 0

    def _rebuild_wrapped_keys(self) -> None:
        """Copy the key table into a new one and drop the old: every page the old one
        had is freed, and secure_delete zeroes freed pages, stale leftovers included."""
        with self._locked_tx() as cur:
            cur.execute(WRAPPED_KEYS.format(table="wrapped_keys_rebuilt"))
            cur.execute("INSERT INTO wrapped_keys_rebuilt SELECT * FROM wrapped_keys")
            cur.execute("DROP TABLE wrapped_keys")
            cur.execute("ALTER TABLE wrapped_keys_rebuilt RENAME TO wrapped_keys")
            cur.execute(WRAPPED_KEYS_INDEX)

    def finals_using(self, upload_id: str) -> list[str]:
        # Ids are [A-Za-z0-9_-], so the quoted id matches exactly one JSON array element.
        pattern = f'%"{upload_id}"%'
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM uploads WHERE concat LIKE 'final%' AND state <> ? AND parts LIKE ?",
                (UploadState.TERMINATED, pattern),
            ).fetchall()
        return [row[0] for row in rows]

    def forget(self, upload_id: str, receipt: StoredReceipt | None = None) -> None:
        super().forget(upload_id, receipt)
        self._shredding.pop(upload_id, None)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            self._file.release()


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: "database or disk is full" (a write that found no space; the
    transaction was rolled back)."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
        "database or disk is full" in str(exc)
    )
