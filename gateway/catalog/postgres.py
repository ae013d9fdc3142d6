"""The PostgreSQL catalog: every upload's durable state in a database many gateways share.

Same promises as the SQLite catalog (gateway/catalog/sqlite.py), kept with PostgreSQL's
own means: row locks (SELECT ... FOR UPDATE) where SQLite has its one write lock,
transaction-level advisory locks where no row exists yet to lock (a lease being taken,
the audit log's head), and a SEQUENCE for fencing tokens. Connections come from a
psycopg-pool pool; each call is one short transaction on one of them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from gateway.catalog.base import (
    ApiKey,
    Deletion,
    Grant,
    Hold,
    Lease,
    LeaseLost,
    LeaseState,
    OffsetConflict,
    Principal,
    Progress,
    RecordRow,
    StoredKey,
    StoredReceipt,
    TailPiece,
    Upload,
    UploadHeld,
    UploadState,
)
from gateway.catalog.postgres_audit import PostgresAuditLog
from gateway.catalog.postgres_schema import LOCK_LEASE, migrate
from gateway.keys.base import WrappedKey

_UPLOAD_FIELDS = tuple(f.name for f in fields(Upload) if f.name != "legacy_metadata")
_COLUMN_OF = {"offset": "upload_offset", "partials": "parts"}
_UPLOAD_COLUMNS = ", ".join(_COLUMN_OF.get(n, n) for n in _UPLOAD_FIELDS)
_GRANT_FIELDS = tuple(f.name for f in fields(Grant))
_GRANT_COLUMNS = ", ".join(_GRANT_FIELDS)
_KEY_COLUMNS = "id, principal_id, tenant, roles, created_at, expires_at, revoked_at, last_used_at"

Cursor = psycopg.Cursor[Any]


class PostgresCatalog(PostgresAuditLog):
    """A `Catalog` in a PostgreSQL database (a `postgresql://` URL); safe to share
    between threads. The schema is created on first use."""

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 4) -> None:
        self._conninfo = conninfo
        self._pool = ConnectionPool(
            conninfo, min_size=min_size, max_size=max_size, open=False, name="catalog"
        )
        self._pool.open(wait=True, timeout=30.0)
        try:
            with self._pool.connection() as conn:
                migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Cursor]:
        """One transaction; any exception rolls everything back.

        `durable=False` lets this commit return before its WAL is flushed (lease
        bookkeeping: a lease lost to a crash of the database is harmless).
        """
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not durable:
                cur.execute("SET LOCAL synchronous_commit = off")
            yield cur

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    # uploads

    def create_upload(self, upload: Upload, wrapped: WrappedKey | None) -> None:
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

    # key rotation

    def wrapped_key_counts(self) -> dict[tuple[str, int], int]:
        rows = self._query(
            "SELECT kek_id, kek_version, COUNT(*) FROM wrapped_keys GROUP BY kek_id, kek_version"
        )
        return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}

    def wrapped_keys_not_under(
        self, kek_id: str, kek_version: int, after: bytes = b"", limit: int = 100
    ) -> list[StoredKey]:
        rows = self._query(
            "SELECT dek_id, upload_id, kek_id, kek_version, blob FROM wrapped_keys "
            "WHERE dek_id > %s AND NOT (kek_id = %s AND kek_version = %s) "
            "ORDER BY dek_id LIMIT %s",
            (after, kek_id, kek_version, limit),
        )
        return [
            StoredKey(bytes(r[0]), str(r[1]), WrappedKey(str(r[2]), int(r[3]), bytes(r[4])))
            for r in rows
        ]

    def replace_wrapped_key(self, dek_id: bytes, old: WrappedKey, new: WrappedKey) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE wrapped_keys SET kek_id = %s, kek_version = %s, blob = %s "
                "WHERE dek_id = %s AND kek_id = %s AND kek_version = %s AND blob = %s",
                (
                    new.kek_id,
                    new.kek_version,
                    new.blob,
                    dek_id,
                    old.kek_id,
                    old.kek_version,
                    old.blob,
                ),
            )
            return cur.rowcount == 1

    # leases

    def acquire_lease(self, upload_id: str, holder: str, ttl: float, now: float) -> Lease | None:
        with self._tx() as cur:
            # No row may exist yet to lock: the advisory lock on the id serialises
            # acquirers, the row lock serialises against renewals and commits.
            cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_LEASE, upload_id))
            row = cur.execute(
                "SELECT holder, expires_at FROM leases WHERE upload_id = %s FOR UPDATE",
                (upload_id,),
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                cur.execute(
                    "UPDATE leases SET release_requested = TRUE WHERE upload_id = %s",
                    (upload_id,),
                )
                return None
            token_row = cur.execute("SELECT nextval('fencing_tokens')").fetchone()
            assert token_row is not None
            token = int(token_row[0])
            expires_at = now + ttl
            cur.execute(
                "INSERT INTO leases (upload_id, holder, token, expires_at, release_requested) "
                "VALUES (%s, %s, %s, %s, FALSE) ON CONFLICT (upload_id) DO UPDATE SET "
                "holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at, release_requested = FALSE",
                (upload_id, holder, token, expires_at),
            )
            return Lease(upload_id=upload_id, holder=holder, token=token, expires_at=expires_at)

    def renew_lease(self, lease: Lease, ttl: float, now: float) -> LeaseState:
        # Even past its expiry the lease is still ours while nobody has taken it
        # (taking it always changes the token).
        with self._tx(durable=False) as cur:
            row = cur.execute(
                "UPDATE leases SET expires_at = %s WHERE upload_id = %s AND holder = %s "
                "AND token = %s RETURNING release_requested",
                (now + ttl, lease.upload_id, lease.holder, lease.token),
            ).fetchone()
        if row is None:
            return LeaseState(valid=False, release_requested=False)
        return LeaseState(valid=True, release_requested=bool(row[0]))

    def release_lease(self, lease: Lease) -> None:
        with self._tx(durable=False) as cur:
            cur.execute(
                "DELETE FROM leases WHERE upload_id = %s AND holder = %s AND token = %s",
                (lease.upload_id, lease.holder, lease.token),
            )

    def lease_held(self, upload_id: str, now: float) -> bool:
        rows = self._query(
            "SELECT 1 FROM leases WHERE upload_id = %s AND expires_at > %s", (upload_id, now)
        )
        return bool(rows)

    # grants

    def add_grant(self, grant: Grant) -> bool:
        with self._tx() as cur:
            # FOR SHARE: a terminate cannot slip in between this check and the insert.
            row = cur.execute(
                "SELECT 1 FROM uploads WHERE id = %s AND state <> %s FOR SHARE",
                (grant.upload_id, str(UploadState.TERMINATED)),
            ).fetchone()
            if row is None:
                return False
            cur.execute(
                "DELETE FROM grants WHERE upload_id = %s AND expires_at <= %s",
                (grant.upload_id, grant.created_at),
            )
            cur.execute(
                f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                tuple(getattr(grant, name) for name in _GRANT_FIELDS),
            )
            return True

    def grants(self, upload_id: str, now: float) -> list[Grant]:
        rows = self._query(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE upload_id = %s AND expires_at > %s "
            "ORDER BY created_at, id",
            (upload_id, now),
        )
        return [Grant(**dict(zip(_GRANT_FIELDS, row, strict=True))) for row in rows]

    def revoke_grant(self, upload_id: str, grant_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM grants WHERE upload_id = %s AND id = %s", (upload_id, grant_id)
            )
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
                "expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (token_hash) "
                "DO UPDATE SET principal_id = excluded.principal_id, tenant = excluded.tenant, "
                "roles = excluded.roles, id = excluded.id, expires_at = excluded.expires_at, "
                "revoked_at = NULL",
                (token_hash, principal.id, principal.tenant, now, roles, token_id, expires_at),
            )
        return token_id

    def api_key(self, token_hash: bytes) -> ApiKey | None:
        rows = self._query(
            f"SELECT {_KEY_COLUMNS} FROM tokens WHERE token_hash = %s", (token_hash,)
        )
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
                "UPDATE tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (now, token_id),
            )
            return cur.rowcount == 1

    def token_used(self, token_id: str, now: float, *, every: float = 60.0) -> None:
        with self._tx(durable=False) as cur:
            cur.execute(
                "UPDATE tokens SET last_used_at = %s WHERE id = %s "
                "AND (last_used_at IS NULL OR last_used_at <= %s)",
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
        self._pool.close()


def _insert_key(cur: Cursor, dek_id: bytes, upload_id: str, wrapped: WrappedKey) -> None:
    cur.execute(
        "INSERT INTO wrapped_keys (dek_id, upload_id, kek_id, kek_version, blob) "
        "VALUES (%s, %s, %s, %s, %s)",
        (dek_id, upload_id, wrapped.kek_id, wrapped.kek_version, wrapped.blob),
    )


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
    row["partials"] = tuple(row["partials"])
    row["state"] = UploadState(row["state"])
    return Upload(**row)


def _refuse_held(cur: Cursor, upload_id: str) -> None:
    row = cur.execute("SELECT held FROM uploads WHERE id = %s FOR UPDATE", (upload_id,)).fetchone()
    if row is not None and row[0]:
        raise UploadHeld(upload_id)
