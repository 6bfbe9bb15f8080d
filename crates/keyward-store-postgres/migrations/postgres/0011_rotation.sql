-- keyward schema, version 11: rotation. A key carries its own rotation policy and, once rolled,
-- how (JSON, '{}' when it has neither); a role may carry a policy for the keys that hold it.
-- A successor made by the scheduler waits, sealed, for the holder of the key it replaces to
-- collect it once (POST /v1/self/rotate), until that key's grace period ends.

ALTER TABLE keys ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';
ALTER TABLE roles ADD COLUMN rotation TEXT;

CREATE TABLE key_handovers (
    successor    TEXT COLLATE "C" PRIMARY KEY,
    predecessor  TEXT COLLATE "C" NOT NULL UNIQUE,
    environment  TEXT COLLATE "C" NOT NULL,
    sealed       BYTEA NOT NULL,       -- the successor's key, sealed under its environment's keyring
    expires_at   BIGINT NOT NULL       -- the predecessor's end of grace: no pickup after it
);
CREATE INDEX key_handovers_by_expiry ON key_handovers (expires_at);
