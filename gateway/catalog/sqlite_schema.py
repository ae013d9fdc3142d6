"""The SQLite catalog's schema, and the upgrade of older catalogs to it."""

from __future__ import annotations

import sqlite3

from gateway.catalog.base import SchemaMismatch

# 2: metadata is sealed (a BLOB). A version 1 catalog is taken as it is: its rows'
# plain-text metadata (TEXT values) is read as legacy until the service seals it.
# 3: legal holds (columns of uploads), token roles, pending deletions and deletion
# receipts. Older catalogs gain the columns (ALTER TABLE ... ADD COLUMN) and tables.
# Older versions refuse a version 3 catalog: they would delete held uploads.
# 4: API keys have an id, an expiry, a revocation time and a last-used time
# (identity block below); grants (read access to one upload for another principal,
# _GRANTS below); the audit log and its signed checkpoints (_AUDIT_SCHEMA below).
# 5: key checks (KEY_CHECKS): a random value wrapped under each KEK version gateways
# have used, which an instance must unwrap before it starts.
# 6: the hooks' outbox (HOOK_OUTBOX): webhook deliveries waiting, retried or dead.
# 7: fencing tokens come from durably reserved blocks (lease_tokens' 'reserved' row,
# sqlite_leases.py). Older versions refuse it: they would not skip the rest of a block.
SCHEMA_VERSION = 7
_UPGRADABLE = (1, 2, 3, 4, 5, 6)

WRAPPED_KEYS = """CREATE TABLE IF NOT EXISTS {table} (
        dek_id BLOB PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        blob BLOB NOT NULL
    )"""
WRAPPED_KEYS_INDEX = "CREATE INDEX IF NOT EXISTS wrapped_keys_upload ON wrapped_keys (upload_id)"

# Kept to types and syntax PostgreSQL also accepts (BIGINT, DOUBLE PRECISION, BOOLEAN,
# ON CONFLICT), except BLOB, which becomes BYTEA there. "offset" is a reserved word in
# PostgreSQL, hence upload_offset.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        tenant TEXT NOT NULL,
        length BIGINT,
        upload_offset BIGINT NOT NULL,
        metadata BLOB,
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        segment_size BIGINT NOT NULL,
        header BLOB NOT NULL,
        dek_id BLOB NOT NULL,
        multipart_id TEXT,
        concat TEXT,
        parts TEXT NOT NULL,
        checksum BLOB,
        completed_at DOUBLE PRECISION,
        held BOOLEAN NOT NULL DEFAULT FALSE,
        hold_case TEXT,
        hold_by TEXT,
        hold_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (state, expires_at)",
    "CREATE INDEX IF NOT EXISTS uploads_owner ON uploads (tenant, owner, state)",
    """CREATE TABLE IF NOT EXISTS records (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        idx BIGINT NOT NULL,
        plaintext_len BIGINT NOT NULL,
        final BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        sha256 BLOB NOT NULL,
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
    WRAPPED_KEYS.format(table="wrapped_keys"),
    WRAPPED_KEYS_INDEX,
    # No foreign key to uploads: a lease is only a claim on an id, and acquiring one
    # must not fail with an integrity error if the upload row is gone.
    """CREATE TABLE IF NOT EXISTS leases (
        upload_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        release_requested BOOLEAN NOT NULL
    )""",
    # One global counter (a SEQUENCE in PostgreSQL): fencing tokens then never repeat
    # for any upload, even after its lease row is released or forgotten.
    """CREATE TABLE IF NOT EXISTS lease_tokens (
        name TEXT PRIMARY KEY,
        last_token BIGINT NOT NULL
    )""",
    "INSERT INTO lease_tokens (name, last_token) VALUES ('fencing', 0) "
    "ON CONFLICT (name) DO NOTHING",
    # The end of the block of tokens reserved with an fsync (version 7).
    "INSERT INTO lease_tokens (name, last_token) VALUES ('reserved', 0) "
    "ON CONFLICT (name) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_hash BLOB PRIMARY KEY,
        principal_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        roles TEXT NOT NULL DEFAULT '',
        id TEXT,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        last_used_at DOUBLE PRECISION
    )""",
    # What a removal's receipt will say, from the moment its key is deleted until its
    # rows are forgotten (no foreign key: the row outlives nothing, but goes with them).
    """CREATE TABLE IF NOT EXISTS deletions (
        upload_id TEXT PRIMARY KEY,
        requested_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        deleted_by TEXT NOT NULL,
        manifest_sha256 TEXT,
        dek_id BLOB NOT NULL,
        kek_id TEXT,
        kek_version INTEGER
    )""",
    # Signed receipts of finished removals, kept for auditors after the upload's rows go.
    """CREATE TABLE IF NOT EXISTS deletion_receipts (
        upload_id TEXT PRIMARY KEY,
        issued_at DOUBLE PRECISION NOT NULL,
        jws TEXT NOT NULL
    )""",
)

# -- version 4: grants -----------------------------------------------------------------
# Read access to one upload for one principal until expires_at (gateway/grants.py). No
# foreign key: the rows go with the upload's (terminate, retire, forget delete them).
# A version 3 catalog gains the table; nothing else changes.
_GRANTS = (
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
)
# -- end of version 4: grants ----------------------------------------------------------
# --- version 4: the audit log (gateway/audit.py) ----------------------------------------
# One row per entry: `entry` is the entry's canonical JSON (RFC 8785) exactly as hashed,
# `hash` its SHA-256 (hex); the other columns repeat members of it for queries, and
# `gateway audit verify` checks that they agree. seq is gap-free: an append reads the
# last row in the same write transaction (BEGIN IMMEDIATE), so the chain never forks.
_AUDIT_SCHEMA = (
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
    # The chain's head signed at intervals (a compact JWS, typ imgw-audit-checkpoint+jws).
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        issued_at TEXT NOT NULL,
        jws TEXT NOT NULL
    )""",
)
# --- end of version 4: the audit log ------------------------------------------------------

# -- version 5: key checks (gateway/keycheck.py) ---------------------------------------
# Shared with the PostgreSQL schema (BLOB becomes BYTEA there).
KEY_CHECKS = """CREATE TABLE IF NOT EXISTS key_checks (
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        dek_id BLOB NOT NULL,
        blob BLOB NOT NULL,
        PRIMARY KEY (kek_id, kek_version)
    )"""
# -- end of version 5 ------------------------------------------------------------------

# -- version 6: the hooks' outbox (gateway/hooks/) -------------------------------------
# One row per event and target URL, written in the transaction that completes the
# upload; deleted once delivered. A deliverer claims a row (claimed_by, claimed_until)
# while it sends it. No foreign key: an event outlives its upload's removal. Shared
# with the PostgreSQL schema as it is.
HOOK_OUTBOX = (
    """CREATE TABLE IF NOT EXISTS hook_outbox (
        event_id TEXT NOT NULL,
        target TEXT NOT NULL,
        type TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        dead BOOLEAN NOT NULL DEFAULT FALSE,
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION,
        PRIMARY KEY (event_id, target)
    )""",
    "CREATE INDEX IF NOT EXISTS hook_outbox_due ON hook_outbox (dead, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS hook_outbox_order ON hook_outbox (created_at, event_id, target)",
)
# -- end of version 6 ------------------------------------------------------------------

# Columns added since version 2, with what older rows get: no hold, no roles.
_ADDED_COLUMNS = (
    ("uploads", "held", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ("uploads", "hold_case", "TEXT"),
    ("uploads", "hold_by", "TEXT"),
    ("uploads", "hold_at", "DOUBLE PRECISION"),
    ("tokens", "roles", "TEXT NOT NULL DEFAULT ''"),
)

# -- identity (version 4): API key ids, expiry, revocation, last use --------------------
# Older tokens gain the columns (no expiry, never revoked, never used) and a random id;
# the id is what `gateway token list` shows and `gateway token revoke` takes.
_IDENTITY_COLUMNS = (
    ("tokens", "id", "TEXT"),
    ("tokens", "expires_at", "DOUBLE PRECISION"),
    ("tokens", "revoked_at", "DOUBLE PRECISION"),
    ("tokens", "last_used_at", "DOUBLE PRECISION"),
)
_IDENTITY_UPGRADE = ("UPDATE tokens SET id = lower(hex(randomblob(8))) WHERE id IS NULL",)
_IDENTITY_INDEXES = ("CREATE UNIQUE INDEX IF NOT EXISTS tokens_id ON tokens (id)",)
# -- end of identity (version 4) -------------------------------------------------------

# Indexes on columns an older catalog gains only in `migrate`.
_LATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS uploads_completed ON uploads (state, completed_at)",
    *_IDENTITY_INDEXES,
)


def migrate(cur: sqlite3.Cursor, *, apply: bool = True) -> tuple[int, int]:
    """Create the schema, or bring an older catalog up to SCHEMA_VERSION (in the caller's
    write transaction, so processes starting together do it once); the versions before
    and after. Without `apply`, SchemaMismatch instead of any change; a catalog newer
    than this gateway always raises it (migrations only go forward)."""
    before = _version_of(cur)
    if before > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"the catalog's schema is version {before}, newer than this gateway's "
            f"{SCHEMA_VERSION}: run a gateway release that knows it"
        )
    if before < SCHEMA_VERSION and not apply:
        raise SchemaMismatch(
            f"the catalog's schema is version {before}, this gateway needs {SCHEMA_VERSION}: "
            "run `gateway migrate` (or set GATEWAY_MIGRATE=auto)"
        )
    for ddl in (*_SCHEMA, *_GRANTS, *_AUDIT_SCHEMA, KEY_CHECKS, *HOOK_OUTBOX):
        cur.execute(ddl)
    if before == 0:
        cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif before in _UPGRADABLE:
        for table, column, declaration in (*_ADDED_COLUMNS, *_IDENTITY_COLUMNS):
            present = {r[1] for r in cur.execute(f"PRAGMA table_info({table})").fetchall()}
            if column not in present:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        for statement in _IDENTITY_UPGRADE:
            cur.execute(statement)
        cur.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    for ddl in _LATE_INDEXES:
        cur.execute(ddl)
    return before, SCHEMA_VERSION


def _version_of(cur: sqlite3.Cursor) -> int:
    """The catalog's schema version; 0 for an empty database."""
    exists = cur.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    row = cur.execute("SELECT version FROM schema_version").fetchone() if exists else None
    return 0 if row is None else int(row[0])
