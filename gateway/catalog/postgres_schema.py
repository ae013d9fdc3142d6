"""The PostgreSQL catalog's schema (version 1: what SQLite's version 4 holds)."""

from __future__ import annotations

import psycopg

SCHEMA_VERSION = 1

# Keys of transaction-level advisory locks (pg_advisory_xact_lock(class, key)): the
# first number says what is locked, the second which one (0 for the only one).
LOCK_MIGRATE = 0x67770001  # the schema, while a process creates or upgrades it
LOCK_AUDIT = 0x67770002  # the audit log's head: appends are serialised, seq stays gap-free
LOCK_LEASE = 0x67770003  # one upload's lease (second key: hashtext(upload_id))

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS uploads (
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
    "CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (state, expires_at)",
    "CREATE INDEX IF NOT EXISTS uploads_owner ON uploads (tenant, owner, state)",
    "CREATE INDEX IF NOT EXISTS uploads_completed ON uploads (state, completed_at)",
    # finals_using: which final concatenations list a partial.
    "CREATE INDEX IF NOT EXISTS uploads_parts ON uploads USING GIN (parts)",
    """CREATE TABLE IF NOT EXISTS records (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        idx BIGINT NOT NULL,
        plaintext_len BIGINT NOT NULL,
        final BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        sha256 BYTEA NOT NULL,
        etag TEXT NOT NULL,
        PRIMARY KEY (upload_id, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS tail_pieces (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        segment BIGINT NOT NULL,
        piece BIGINT NOT NULL,
        start BIGINT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (upload_id, segment, piece)
    )""",
    """CREATE TABLE IF NOT EXISTS wrapped_keys (
        dek_id BYTEA PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        blob BYTEA NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS wrapped_keys_upload ON wrapped_keys (upload_id)",
    # No foreign key: a lease is only a claim on an id (see the SQLite schema).
    """CREATE TABLE IF NOT EXISTS leases (
        upload_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        release_requested BOOLEAN NOT NULL
    )""",
    # Fencing tokens never repeat for any upload, even after its lease row goes. A
    # sequence is not rolled back with a failed transaction: gaps are harmless, only
    # growth matters.
    "CREATE SEQUENCE IF NOT EXISTS fencing_tokens AS BIGINT",
    """CREATE TABLE IF NOT EXISTS tokens (
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
    """CREATE TABLE IF NOT EXISTS deletions (
        upload_id TEXT PRIMARY KEY,
        requested_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        deleted_by JSONB NOT NULL,
        manifest_sha256 TEXT,
        dek_id BYTEA NOT NULL,
        kek_id TEXT,
        kek_version INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS deletion_receipts (
        upload_id TEXT PRIMARY KEY,
        issued_at DOUBLE PRECISION NOT NULL,
        jws TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        tenant TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS grants_upload ON grants (upload_id, expires_at)",
    # The audit log: as in SQLite (gateway/catalog/sqlite_schema.py), appends serialised
    # by the LOCK_AUDIT advisory lock instead of SQLite's write lock.
    """CREATE TABLE IF NOT EXISTS audit_log (
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
    "CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time)",
    "CREATE INDEX IF NOT EXISTS audit_log_upload ON audit_log (upload_id, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_principal ON audit_log (principal, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_tenant ON audit_log (tenant, seq)",
    "CREATE INDEX IF NOT EXISTS audit_log_upload_tenant ON audit_log (upload_tenant, seq)",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        issued_at TEXT NOT NULL,
        jws TEXT NOT NULL
    )""",
)


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the schema in an empty database, in one transaction; processes starting
    together take turns (an advisory lock), so one creates it and the others find it."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_MIGRATE,))
        for ddl in _SCHEMA:
            cur.execute(ddl)
        row = cur.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise RuntimeError(
                f"catalog schema version {row[0]} is not supported (want {SCHEMA_VERSION})"
            )
