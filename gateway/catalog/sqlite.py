"""The SQLite catalog: one WAL-mode database file holding every upload's durable state."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from gateway.catalog.audit_sql import AuditLogSQL
from gateway.catalog.base import (
    ApiKey,
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
from gateway.catalog.keys_sql import KeyRotationSQL
from gateway.catalog.sqlite_files import DatabaseFile
from gateway.catalog.sqlite_hooks import SQLiteHookOutbox, add_event
from gateway.catalog.sqlite_schema import WRAPPED_KEYS, WRAPPED_KEYS_INDEX, migrate
from gateway.keys.base import WrappedKey

# Column order follows the Upload dataclass; only "offset" is renamed. Legacy metadata
# is a TEXT value of the metadata column, never a column of its own.
_UPLOAD_FIELDS = tuple(f.name for f in fields(Upload) if f.name != "legacy_metadata")
# Two fields keep older column names: "offset" is an SQL word, and "parts" predates
# the name "partials" (a store's multipart parts are another thing).
_COLUMN_OF = {"offset": "upload_offset", "partials": "parts"}
_UPLOAD_COLUMNS = ", ".join(_COLUMN_OF.get(n, n) for n in _UPLOAD_FIELDS)
_GRANT_FIELDS = tuple(f.name for f in fields(Grant))
_GRANT_COLUMNS = ", ".join(_GRANT_FIELDS)


class SQLiteCatalog(SQLiteHookOutbox, AuditLogSQL, KeyRotationSQL):
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
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # uploads

    def create_upload(
        self, upload: Upload, wrapped: WrappedKey | None, event: HookEvent | None = None
    ) -> None:
        if upload.legacy_metadata is not None:
            raise ValueError("plain-text metadata is never written to the catalog")
        values = [getattr(upload, name) for name in _UPLOAD_FIELDS]
        values[_UPLOAD_FIELDS.index("partials")] = json.dumps(list(upload.partials))
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            if wrapped is not None:
                cur.execute(
                    "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (upload.dek_id, upload.id, wrapped.kek_id, wrapped.kek_version, wrapped.blob),
                )
            add_event(cur, event)

    def get_upload(self, upload_id: str) -> Upload | None:
        rows = self._query(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
        if not rows:
            return None
        return _upload_from(rows[0])

    def records(self, upload_id: str) -> list[RecordRow]:
        rows = self._query(
            "SELECT idx, plaintext_len, final, size, sha256, etag FROM records "
            "WHERE upload_id = ? ORDER BY idx",
            (upload_id,),
        )
        # SQLite hands booleans back as 0/1.
        return [RecordRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    def tail_pieces(self, upload_id: str) -> list[TailPiece]:
        rows = self._query(
            "SELECT segment, piece, start, length FROM tail_pieces "
            "WHERE upload_id = ? ORDER BY segment, piece",
            (upload_id,),
        )
        return [TailPiece(*r) for r in rows]

    def wrapped_key(self, dek_id: bytes) -> WrappedKey | None:
        rows = self._query(
            "SELECT kek_id, kek_version, blob FROM wrapped_keys WHERE dek_id = ?",
            (dek_id,),
        )
        if not rows:
            return None
        kek_id, version, blob = rows[0]
        return WrappedKey(kek_id=kek_id, kek_version=version, blob=blob)

    def commit(self, lease: Lease, progress: Progress) -> None:
        uid, recs = lease.upload_id, progress.records
        with self._tx() as cur:
            q = "SELECT holder, token FROM leases WHERE upload_id = ?"
            row = cur.execute(q, (uid,)).fetchone()
            # Expiry is the holder's own business; a takeover shows as a different token.
            if row is None or row[0] != lease.holder or row[1] != lease.token:
                raise LeaseLost(uid)
            up = cur.execute(
                "SELECT upload_offset, state FROM uploads WHERE id = ?", (uid,)
            ).fetchone()
            # A terminated (or vanished) upload must never move forward again, least of
            # all back to "complete"; for the writer that is a lost lease.
            if up is None or up[1] != UploadState.ACTIVE:
                raise LeaseLost(uid)
            if up[0] != progress.expected_offset:
                raise OffsetConflict(f"{uid}: offset is {up[0]}, not {progress.expected_offset}")
            cur.executemany(
                "INSERT INTO records (upload_id, idx, plaintext_len, final, size, sha256, etag) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, idx) DO UPDATE SET "
                "plaintext_len = excluded.plaintext_len, final = excluded.final, "
                "size = excluded.size, sha256 = excluded.sha256, etag = excluded.etag",
                [(uid, r.index, r.plaintext_len, r.final, r.size, r.sha256, r.etag) for r in recs],
            )
            p = progress.add_piece
            if p is not None:
                cur.execute(
                    "INSERT INTO tail_pieces (upload_id, segment, piece, start, length) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (upload_id, segment, piece) DO UPDATE "
                    "SET start = excluded.start, length = excluded.length",
                    (uid, p.segment, p.piece, p.start, p.length),
                )
            cur.executemany(
                "DELETE FROM tail_pieces WHERE upload_id = ? AND segment = ? AND piece = ?",
                [(uid, d.segment, d.piece) for d in progress.drop_pieces],
            )
            if progress.drop_pieces_below is not None:
                cur.execute(
                    "DELETE FROM tail_pieces WHERE upload_id = ? AND segment < ?",
                    (uid, progress.drop_pieces_below),
                )
            cur.execute(
                "UPDATE uploads SET upload_offset = ?, expires_at = COALESCE(?, expires_at), "
                "checksum = COALESCE(?, checksum) WHERE id = ?",
                (progress.offset, progress.expires_at, progress.checksum, uid),
            )
            if progress.complete_at is not None:
                cur.execute(
                    "UPDATE uploads SET state = ?, completed_at = ? WHERE id = ?",
                    (UploadState.COMPLETE, progress.complete_at, uid),
                )
            add_event(cur, progress.event)

    def set_length(self, upload_id: str, length: int) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET length = ? WHERE id = ? AND length IS NULL",
                (length, upload_id),
            )

    def legacy_metadata(self, after: str = "", limit: int = 100) -> list[Upload]:
        # A sealed value is a BLOB; a TEXT value was written in plain text by version 1.
        rows = self._query(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE typeof(metadata) = 'text' "
            "AND id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [_upload_from(row) for row in rows]

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
                    cur.execute(
                        "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            upload.dek_id,
                            upload.id,
                            wrapped.kek_id,
                            wrapped.kek_version,
                            wrapped.blob,
                        ),
                    )
        if changed:
            # secure_delete zeroed the old values in the database file; the WAL may
            # still hold page images with them until a checkpoint truncates it (best
            # effort: a busy checkpoint only delays that to a later one).
            with self._lock:
                self._checkpoint()
        return changed

    def terminate(self, upload_id: str, deletion: Deletion | None = None) -> None:
        with self._tx() as cur:
            _refuse_held(cur, upload_id)
            if deletion is not None:
                # The first request recorded is the one the receipt names.
                cur.execute(
                    "INSERT INTO deletions (upload_id, requested_at, reason, deleted_by, "
                    "manifest_sha256, dek_id, kek_id, kek_version) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id) DO NOTHING",
                    (
                        upload_id,
                        deletion.requested_at,
                        deletion.reason,
                        json.dumps(dict(deletion.deleted_by), sort_keys=True),
                        deletion.manifest_sha256,
                        deletion.dek_id,
                        deletion.kek_id,
                        deletion.kek_version,
                    ),
                )
            rows = cur.execute("SELECT blob FROM wrapped_keys WHERE upload_id = ?", (upload_id,))
            blobs = [bytes(row[0]) for row in rows.fetchall()]
            cur.execute(
                "UPDATE uploads SET state = ? WHERE id = ?", (UploadState.TERMINATED, upload_id)
            )
            cur.execute("DELETE FROM wrapped_keys WHERE upload_id = ?", (upload_id,))
            cur.execute("DELETE FROM grants WHERE upload_id = ?", (upload_id,))
            # Dropping the lease makes any in-flight writer's next commit fail at once.
            cur.execute("DELETE FROM leases WHERE upload_id = ?", (upload_id,))
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

    def removals_pending(self, limit: int = 100) -> list[str]:
        # Terminated without a key: a retired partial keeps its key until it is removed.
        rows = self._query(
            "SELECT id FROM uploads WHERE state = ? AND NOT EXISTS "
            "(SELECT 1 FROM wrapped_keys WHERE wrapped_keys.upload_id = uploads.id) LIMIT ?",
            (UploadState.TERMINATED, limit),
        )
        return [str(r[0]) for r in rows]

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

    def retire(self, upload_id: str) -> None:
        with self._tx() as cur:
            _refuse_held(cur, upload_id)
            cur.execute(
                "UPDATE uploads SET state = ? WHERE id = ?", (UploadState.TERMINATED, upload_id)
            )
            cur.execute("DELETE FROM grants WHERE upload_id = ?", (upload_id,))

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
        with self._tx() as cur:
            tables = ("records", "tail_pieces", "wrapped_keys", "leases", "deletions", "grants")
            for table in tables:
                cur.execute(f"DELETE FROM {table} WHERE upload_id = ?", (upload_id,))
            cur.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            if receipt is not None:
                cur.execute(
                    "INSERT INTO deletion_receipts (upload_id, issued_at, jws) VALUES (?, ?, ?) "
                    "ON CONFLICT (upload_id) DO NOTHING",
                    (receipt.upload_id, receipt.issued_at, receipt.jws),
                )
        self._shredding.pop(upload_id, None)

    def expired(self, now: float, limit: int = 100) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE state = ? AND expires_at IS NOT NULL "
            "AND expires_at <= ? AND NOT held ORDER BY expires_at LIMIT ?",
            (UploadState.ACTIVE, now, limit),
        )
        return [str(r[0]) for r in rows]

    def retention_due(self, completed_before: float, limit: int = 100) -> list[str]:
        rows = self._query(
            "SELECT id FROM uploads WHERE state = ? AND completed_at IS NOT NULL "
            "AND completed_at <= ? AND NOT held ORDER BY completed_at, id LIMIT ?",
            (UploadState.COMPLETE, completed_before, limit),
        )
        return [str(r[0]) for r in rows]

    def deletion(self, upload_id: str) -> Deletion | None:
        rows = self._query(
            "SELECT requested_at, reason, deleted_by, manifest_sha256, dek_id, kek_id, "
            "kek_version FROM deletions WHERE upload_id = ?",
            (upload_id,),
        )
        if not rows:
            return None
        at, reason, by, digest, dek_id, kek_id, kek_version = rows[0]
        return Deletion(
            upload_id=upload_id,
            requested_at=float(at),
            reason=str(reason),
            deleted_by=json.loads(by),
            manifest_sha256=digest,
            dek_id=bytes(dek_id),
            kek_id=kek_id,
            kek_version=kek_version,
        )

    def receipt(self, upload_id: str) -> StoredReceipt | None:
        rows = self._query(
            "SELECT issued_at, jws FROM deletion_receipts WHERE upload_id = ?", (upload_id,)
        )
        if not rows:
            return None
        return StoredReceipt(upload_id=upload_id, issued_at=float(rows[0][0]), jws=str(rows[0][1]))

    # legal holds

    def place_hold(self, upload_id: str, hold: Hold) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET held = TRUE, hold_case = ?, hold_by = ?, hold_at = ? "
                "WHERE id = ? AND state <> ?",
                (hold.case, hold.placed_by, hold.placed_at, upload_id, UploadState.TERMINATED),
            )
            return cur.rowcount == 1

    def release_hold(self, upload_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE uploads SET held = FALSE, hold_case = NULL, hold_by = NULL, "
                "hold_at = NULL WHERE id = ? AND held",
                (upload_id,),
            )
            return cur.rowcount == 1

    def hold(self, upload_id: str) -> Hold | None:
        rows = self._query(
            "SELECT hold_case, hold_by, hold_at FROM uploads WHERE id = ? AND held", (upload_id,)
        )
        if not rows:
            return None
        case, by, at = rows[0]
        return Hold(case=case, placed_by=str(by), placed_at=float(at))

    def open_uploads(self, owner: str, tenant: str) -> tuple[int, int]:
        rows = self._query(
            "SELECT COUNT(*), COALESCE(SUM(COALESCE(length, upload_offset)), 0) FROM uploads "
            "WHERE tenant = ? AND owner = ? AND state = ?",
            (tenant, owner, UploadState.ACTIVE),
        )
        return int(rows[0][0]), int(rows[0][1])

    # leases

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        # Durable: the fencing token counter must never go back, even after a power
        # cut, or a new holder could be refused by a store that saw a higher token.
        with self._tx() as cur:
            row = cur.execute(
                "SELECT holder, expires_at FROM leases WHERE upload_id = ?", (upload_id,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                cur.execute(
                    "UPDATE leases SET release_requested = ? WHERE upload_id = ?",
                    (True, upload_id),
                )
                return None
            cur.execute(
                "UPDATE lease_tokens SET last_token = last_token + 1 WHERE name = 'fencing'"
            )
            (token,) = cur.execute(
                "SELECT last_token FROM lease_tokens WHERE name = 'fencing'"
            ).fetchone()
            expires_at = now + ttl
            cur.execute(
                "INSERT INTO leases (upload_id, holder, token, expires_at, release_requested) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (upload_id) DO UPDATE SET "
                "holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at, release_requested = excluded.release_requested",
                (upload_id, holder, token, expires_at, False),
            )
            return Lease(
                upload_id=upload_id, holder=holder, token=int(token), expires_at=expires_at
            )

    def renew_lease(self, lease: Lease, ttl: float, now: float) -> LeaseState:
        with self._tx(durable=False) as cur:
            row = cur.execute(
                "SELECT holder, token, release_requested FROM leases WHERE upload_id = ?",
                (lease.upload_id,),
            ).fetchone()
            # Even past its expiry the lease is still ours while nobody has taken it
            # (taking it always changes the token).
            if row is None or row[0] != lease.holder or row[1] != lease.token:
                return LeaseState(valid=False, release_requested=False)
            cur.execute(
                "UPDATE leases SET expires_at = ? WHERE upload_id = ? AND token = ?",
                (now + ttl, lease.upload_id, lease.token),
            )
            return LeaseState(valid=True, release_requested=bool(row[2]))

    def lease_held(self, upload_id: str, now: float) -> bool:
        rows = self._query(
            "SELECT 1 FROM leases WHERE upload_id = ? AND expires_at > ?", (upload_id, now)
        )
        return bool(rows)

    def release_lease(self, lease: Lease) -> None:
        # Deleting the row is safe for fencing: tokens come from the global counter.
        with self._tx(durable=False) as cur:
            cur.execute(
                "DELETE FROM leases WHERE upload_id = ? AND holder = ? AND token = ?",
                (lease.upload_id, lease.holder, lease.token),
            )

    # grants (read access to one upload)

    def add_grant(self, grant: Grant) -> bool:
        with self._tx() as cur:
            row = cur.execute(
                "SELECT 1 FROM uploads WHERE id = ? AND state <> ?",
                (grant.upload_id, UploadState.TERMINATED),
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "DELETE FROM grants WHERE upload_id = ? AND expires_at <= ?",
                (grant.upload_id, grant.created_at),
            )
            cur.execute(
                f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(getattr(grant, name) for name in _GRANT_FIELDS),
            )
            return True

    def grants(self, upload_id: str, now: float) -> list[Grant]:
        rows = self._query(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE upload_id = ? AND expires_at > ? "
            "ORDER BY created_at, id",
            (upload_id, now),
        )
        return [Grant(**dict(zip(_GRANT_FIELDS, row, strict=True))) for row in rows]

    def revoke_grant(self, upload_id: str, grant_id: str) -> bool:
        with self._tx() as cur:
            cur.execute("DELETE FROM grants WHERE upload_id = ? AND id = ?", (upload_id, grant_id))
            return cur.rowcount == 1

    # bearer tokens (API keys)

    def add_token(
        self,
        token_hash: bytes,
        principal: Principal,
        now: float,
        *,
        token_id: str | None = None,
        expires_at: float | None = None,
    ) -> str:
        roles = " ".join(sorted(principal.roles))
        token_id = token_id or secrets.token_hex(8)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO tokens (token_hash, principal_id, tenant, created_at, roles, id, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO UPDATE SET "
                "principal_id = excluded.principal_id, tenant = excluded.tenant, "
                "roles = excluded.roles, id = excluded.id, expires_at = excluded.expires_at, "
                "revoked_at = NULL",
                (token_hash, principal.id, principal.tenant, now, roles, token_id, expires_at),
            )
        return token_id

    def api_key(self, token_hash: bytes) -> ApiKey | None:
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return _api_key_from(rows[0]) if rows else None

    def principal_for(self, token_hash: bytes) -> Principal | None:
        key = self.api_key(token_hash)
        return key.principal if key is not None and key.usable(time.time()) else None

    def api_keys(self) -> list[ApiKey]:
        rows = self._query(f"SELECT {_KEY_COLUMNS} FROM tokens ORDER BY created_at, id")
        return [_api_key_from(row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            return cur.rowcount == 1

    def token_used(self, token_id: str, now: float, *, every: float = 60.0) -> None:
        # Not durable: a last-use time lost to a power cut is harmless.
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE tokens SET last_used_at = ? WHERE id = ? "
                "AND (last_used_at IS NULL OR last_used_at <= ?)",
                (now, token_id, now - every),
            )

    def token_count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM tokens")
        return int(rows[0][0])

    def check(self) -> None:
        rows = self._query("SELECT 1")
        if rows != [(1,)]:
            raise RuntimeError("catalog check query returned an unexpected result")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            self._file.release()


_KEY_COLUMNS = "id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used_at"


def _api_key_from(row: Sequence[Any]) -> ApiKey:
    token_id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used = row
    principal = Principal(id=str(principal_id), tenant=str(tenant), roles=frozenset(roles.split()))
    return ApiKey(
        id=str(token_id),
        principal=principal,
        created_at=float(created_at),
        expires_at=expires_at,
        revoked_at=revoked_at,
        last_used_at=last_used,
    )


def _upload_from(values: Sequence[Any]) -> Upload:
    row = dict(zip(_UPLOAD_FIELDS, values, strict=True))
    row["partials"] = tuple(json.loads(row["partials"]))
    row["state"] = UploadState(row["state"])
    row["held"] = bool(row["held"])  # SQLite hands booleans back as 0/1
    if isinstance(row["metadata"], str):
        row["legacy_metadata"], row["metadata"] = row["metadata"], None
    return Upload(**row)


def _refuse_held(cur: sqlite3.Cursor, upload_id: str) -> None:
    row = cur.execute("SELECT held FROM uploads WHERE id = ?", (upload_id,)).fetchone()
    if row is not None and row[0]:
        raise UploadHeld(upload_id)
