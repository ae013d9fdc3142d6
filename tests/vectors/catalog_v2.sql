-- A version 2 catalog, as the gateway before legal holds and receipts left it
-- (sqlite3 .dump): one complete upload, one open, a token without roles.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES(2);
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
        completed_at DOUBLE PRECISION
    );
INSERT INTO uploads VALUES('done','alice','t1',5,5,X'017365616c6564','complete',1000.0,5000.0,1048576,X'00686472',X'64656b2d646f6e65',NULL,NULL,'[]',NULL,2000.0);
INSERT INTO uploads VALUES('open','alice','t1',5,0,X'017365616c6564','active',1000.0,3000.0,1048576,X'00686472',X'64656b2d6f70656e',NULL,NULL,'[]',NULL,NULL);
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
INSERT INTO records VALUES('done',0,5,1,133,X'1111111111111111111111111111111111111111111111111111111111111111','e0');
CREATE TABLE tail_pieces (
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        segment BIGINT NOT NULL,
        piece BIGINT NOT NULL,
        start BIGINT NOT NULL,
        length BIGINT NOT NULL,
        PRIMARY KEY (upload_id, segment, piece)
    );
CREATE TABLE wrapped_keys (
        dek_id BLOB PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        kek_id TEXT NOT NULL,
        kek_version INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
INSERT INTO wrapped_keys VALUES(X'64656b2d646f6e65','done','local',1,X'626c6f622d646f6e65');
INSERT INTO wrapped_keys VALUES(X'64656b2d6f70656e','open','local',1,X'626c6f622d6f70656e');
CREATE TABLE leases (
        upload_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        release_requested BOOLEAN NOT NULL
    );
CREATE TABLE lease_tokens (
        name TEXT PRIMARY KEY,
        last_token BIGINT NOT NULL
    );
INSERT INTO lease_tokens VALUES('fencing',1);
CREATE TABLE tokens (
        token_hash BLOB PRIMARY KEY,
        principal_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
INSERT INTO tokens VALUES(X'2222222222222222222222222222222222222222222222222222222222222222','alice','t1',1.0);
CREATE INDEX uploads_expiry ON uploads (state, expires_at);
CREATE INDEX uploads_owner ON uploads (tenant, owner, state);
CREATE INDEX wrapped_keys_upload ON wrapped_keys (upload_id);
COMMIT;
