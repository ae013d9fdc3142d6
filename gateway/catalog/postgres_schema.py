"""The PostgreSQL catalog's schema: versioned migrations, applied in order, forward only.

Version 1 holds what SQLite's version 4 does; version 2 adds the key checks (SQLite's 5),
version 3 the hooks' outbox (SQLite's 6).
A migration is a list of statements run in one transaction with the version's update,
so a schema is always at one version, never between two.
"""

from __future__ import annotations

import psycopg

from gateway.catalog.base import SchemaMismatch
from gateway.catalog.sqlite_schema import HOOK_OUTBOX, KEY_CHECKS

SCHEMA_VERSION = 3

# Keys of transaction-level advisory locks (pg_advisory_xact_lock(class, key)): the
# first number says what is locked, the second which one (0 for the only one).
LOCK_MIGRATE = 0x67770001  # the schema, while a process creates or upgrades it
LOCK_AUDIT = 0x67770002  # the audit log's head: appends are serialised, seq stays gap-free
LOCK_LEASE = 0x67770003  # one upload's lease (second key: hashtext(upload_id))

_VERSION_1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (0)",
    """CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        tenant TEXT NOT NULL,
        length BIGINT,
        upload_offset BIGINT NOT NULL,
        metadata BYTEA,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        segment_size BIGINT NOT NULL,
        header BYTEA NOT NULL,
        dek_id BYTEA NOT NULL,
        multipart_id TEXT,
        concat TEXT,
        parts TEXT[] NOT NULL,
        checksum BYTEA,
        completed_at DOUBLE PRECISION,
        held BOOLEAN NOT NULL DEFAULT FALSE,
        hold_case TEXT,
        hold_by TEXT,
        hold_at DOUBLE PRECISION
    )""",
    "CREATE INDEX uploads_expiry ON uploads (state, expires_at)",
    "CREATE INDEX uploads_owner ON uploads (tenant, owner, state)",
    "CREATE INDEX uploads_completed ON uploads (state, completed_at)",
    # finals_using: which final concatenations list a partial.
    "CREATE INDEX uploads_parts ON uploads USING GIN (parts)",
    """CREATE TABLE records (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        idx BIGINT NOT NULL,
        plaintext_len BIGINT NOT NULL,
        final BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        sha256 BYTEA NOT NULL,
        etag TEXT NOT NULL,
        PRIMARY KEY (upload_id, idx)
    )""",
    """CREATE TABLE tail_pieces (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        segment BIGINT NOT NULL,
        piece BIGINT NOT NULL,
        start BIGINT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (upload_id, segment, piece)
    )""",
    """CREATE TABLE wrapped_keys (
        dek_id BYTEA PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        blob BYTEA NOT NULL
    )""",
    "CREATE INDEX wrapped_keys_upload ON wrapped_keys (upload_id)",
    # No foreign key: a lease is only a claim on an id (see the SQLite schema).
    """CREATE TABLE leases (
        upload_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        release_requested BOOLEAN NOT NULL
    )""",
    # Fencing tokens never repeat for any upload, even after its lease row goes. A
    # sequence is not rolled back with a failed transaction: gaps are harmless, only
    # growth matters.
    "CREATE SEQUENCE fencing_tokens AS BIGINT",
    """CREATE TABLE tokens (
        token_hash BYTEA PRIMARY KEY,
        principal_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        roles TEXT NOT NULL DEFAULT '',
        id TEXT NOT NULL UNIQUE,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        last_used_at DOUBLE PRECISION
    )""",
    """CREATE TABLE deletions (
        upload_id TEXT PRIMARY KEY,
        requested_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        deleted_by JSONB NOT NULL,
        manifest_sha256 TEXT,
        dek_id BYTEA NOT NULL,
        kek_id TEXT,
        kek_version INTEGER
    )""",
    """CREATE TABLE deletion_receipts (
        upload_id TEXT PRIMARY KEY,
        issued_at DOUBLE PRECISION NOT NULL,
        jws TEXT NOT NULL
    )""",
    """CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        tenant TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX grants_upload ON grants (upload_id, expires_at)",
    # The audit log: as in SQLite (gateway/catalog/sqlite_schema.py), appends serialised
    # by the LOCK_AUDIT advisory lock instead of SQLite's write lock.
    """CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY,
        time TEXT NOT NULL,
        action TEXT NOT NULL,
        principal TEXT,
        tenant TEXT,
        upload_id TEXT,
        upload_tenant TEXT,
        entry TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX audit_log_time ON audit_log (time)",
    "CREATE INDEX audit_log_upload ON audit_log (upload_id, seq)",
    "CREATE INDEX audit_log_principal ON audit_log (principal, seq)",
    "CREATE INDEX audit_log_tenant ON audit_log (tenant, seq)",
    "CREATE INDEX audit_log_upload_tenant ON audit_log (upload_tenant, seq)",
    """CREATE TABLE audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        issued_at TEXT NOT NULL,
        jws TEXT NOT NULL
    )""",
)


_VERSION_2 = (KEY_CHECKS.replace("BLOB", "BYTEA"),)

_VERSION_3 = tuple(ddl.replace(" IF NOT EXISTS", "") for ddl in HOOK_OUTBOX)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _VERSION_1, 2: _VERSION_2, 3: _VERSION_3}


def migrate(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    apply: bool = True,
    target: int = SCHEMA_VERSION,
) -> tuple[int, int]:
    """Bring the schema to `target` (this gateway's version) in one transaction; the
    versions before and after. Processes starting together take turns (an advisory
    lock), so one migrates and the others find it done. Without `apply`, SchemaMismatch
    instead of any change; a schema newer than this gateway always raises it."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_MIGRATE,))
        before = _version_of(cur)
        if before > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the catalog's schema is version {before}, newer than this gateway's "
                f"{SCHEMA_VERSION}: run a gateway release that knows it"
            )
        if before < target and not apply:
            raise SchemaMismatch(
                f"the catalog's schema is version {before}, this gateway needs {target}: "
                "run `gateway migrate` (or set GATEWAY_MIGRATE=auto)"
            )
        for version in range(before + 1, target + 1):
            for statement in MIGRATIONS[version]:
                cur.execute(statement)
            cur.execute("UPDATE schema_version SET version = %s", (version,))
        return before, max(before, target)


def _version_of(cur: psycopg.Cursor[tuple[object, ...]]) -> int:
    """The schema's version; 0 for an empty database."""
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur.execute("SELECT version FROM schema_version")
    found = cur.fetchone()
    return 0 if found is None else int(str(found[0]))
