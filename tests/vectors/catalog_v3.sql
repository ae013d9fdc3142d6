-- A version 3 catalog, as the gateway before token ids, expiry and revocation left it
-- (sqlite3 .dump): two tokens, one with the admin role.
BEGIN TRANSACTION;
CREATE TABLE deletion_receipts (
        upload_id TEXT PRIMARY KEY,
        issued_at DOUBLE PRECISION NOT NULL,
        jws TEXT NOT NULL
    );
CREATE TABLE deletions (
        upload_id TEXT PRIMARY KEY,
        requested_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        deleted_by TEXT NOT NULL,
        manifest_sha256 TEXT,
        dek_id BLOB NOT NULL,
        kek_id TEXT,
        kek_version INTEGER
    );
CREATE TABLE lease_tokens (
        name TEXT PRIMARY KEY,
        last_token BIGINT NOT NULL
    );
INSERT INTO "lease_tokens" VALUES('fencing',0);
CREATE TABLE leases (
        upload_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        release_requested BOOLEAN NOT NULL
    );
CREATE TABLE records (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        idx BIGINT NOT NULL,
        plaintext_len BIGINT NOT NULL,
        final BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        sha256 BLOB NOT NULL,
        etag TEXT NOT NULL,
        PRIMARY KEY (upload_id, idx)
    );
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO "schema_version" VALUES(3);
CREATE TABLE tail_pieces (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        segment BIGINT NOT NULL,
        piece BIGINT NOT NULL,
        start BIGINT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (upload_id, segment, piece)
    );
CREATE TABLE tokens (
        token_hash BLOB PRIMARY KEY,
        principal_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        roles TEXT NOT NULL DEFAULT ''
    );
INSERT INTO "tokens" VALUES(X'3333333333333333333333333333333333333333333333333333333333333333','pacs','north',1000.0,'admin');
INSERT INTO "tokens" VALUES(X'4444444444444444444444444444444444444444444444444444444444444444','script','south',2000.0,'');
CREATE TABLE uploads (
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
    );
CREATE TABLE wrapped_keys (
        dek_id BLOB PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
CREATE INDEX uploads_expiry ON uploads (state, expires_at);
CREATE INDEX uploads_owner ON uploads (tenant, owner, state);
CREATE INDEX wrapped_keys_upload ON wrapped_keys (upload_id);
CREATE INDEX uploads_completed ON uploads (state, completed_at);
COMMIT;
