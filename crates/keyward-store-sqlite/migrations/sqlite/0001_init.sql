-- keyward schema, version 1.
-- Keys are stored only as HMAC-SHA256 (hash) plus a displayable start; never the key itself.

CREATE TABLE environments (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,          -- UUIDv7: sorts by creation time
    service            TEXT NOT NULL,
    environment        TEXT NOT NULL REFERENCES environments(name),
    hash               BLOB NOT NULL UNIQUE,
    start              TEXT NOT NULL,
    name               TEXT NOT NULL,
    owner              TEXT NOT NULL,
    purpose            TEXT,
    permissions        TEXT NOT NULL,             -- JSON array of strings
    meta               TEXT NOT NULL,             -- JSON object
    created_at         INTEGER NOT NULL,          -- Unix milliseconds, as every time here
    updated_at         INTEGER NOT NULL,
    expires_at         INTEGER,
    status             TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),
    revoked_at         INTEGER,
    revocation_reason  TEXT,
    rolled_from        TEXT,
    rolled_to          TEXT,
    last_used_at       INTEGER,
    uses               INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX keys_environment ON keys (environment, id);
CREATE INDEX keys_owner ON keys (owner, id);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,               -- 1, 2, 3 … with no gaps
    ts         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    details    TEXT NOT NULL,                     -- JSON; never a secret
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
) STRICT;

-- The log is append-only: the store itself refuses to change or delete an entry.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log entries are immutable'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log entries are immutable'); END;
