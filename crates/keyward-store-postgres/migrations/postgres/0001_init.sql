-- keyward schema, version 1 (PostgreSQL).
-- Keys are stored only as HMAC-SHA256 (hash) plus a displayable start; never the key itself.
-- Times are Unix milliseconds (BIGINT), as in the embedded store, so records round-trip exactly;
-- text that is ordered or matched by prefix is in the "C" collation, so order is by code point
-- whatever the database's locale.

CREATE TABLE environments (
    name        TEXT COLLATE "C" PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE keys (
    id                 TEXT COLLATE "C" PRIMARY KEY,  -- UUIDv7: sorts by creation time
    service            TEXT NOT NULL,
    environment        TEXT NOT NULL REFERENCES environments(name),
    hash               BYTEA NOT NULL UNIQUE,
    start              TEXT NOT NULL,
    name               TEXT NOT NULL,
    owner              TEXT NOT NULL,
    purpose            TEXT,
    permissions        TEXT NOT NULL,             -- JSON array of strings
    meta               TEXT NOT NULL,             -- JSON object
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    expires_at         BIGINT,
    status             TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    rolled_from        TEXT,
    rolled_to          TEXT,
    last_used_at       BIGINT,
    uses               BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX keys_environment ON keys (environment, id);
CREATE INDEX keys_owner ON keys (owner, id);

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,                -- 1, 2, 3 … with no gaps
    ts         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    details    TEXT NOT NULL,                     -- JSON; never a secret
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

-- The log is append-only: the store itself refuses to change or delete an entry.
CREATE FUNCTION keyward_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log entries are immutable';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keyward_audit_immutable();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keyward_audit_immutable();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION keyward_audit_immutable();

-- The change feed: one row per committed write, in commit order (writes are serialised by an
-- advisory lock), naming what changed. Nodes follow it through LISTEN/NOTIFY and read it again
-- after a reconnect, so none misses a change.
CREATE TABLE change_log (
    seq      BIGINT PRIMARY KEY,
    origin   TEXT NOT NULL,                     -- the node that wrote it
    at       BIGINT NOT NULL,
    summary  TEXT NOT NULL                      -- JSON: ids of what changed, never a value
);
