-- keyward schema, version 9: integrity tags. The service seals the security-relevant fields of
-- keys, environments, roles, plans and the vault record with an HMAC under a key the vault
-- seals, and keeps a tagged checkpoint of the audit log's head.

ALTER TABLE keys ADD COLUMN mac BYTEA;
ALTER TABLE environments ADD COLUMN mac BYTEA;
ALTER TABLE roles ADD COLUMN mac BYTEA;
ALTER TABLE plans ADD COLUMN mac BYTEA;
ALTER TABLE vault ADD COLUMN mac BYTEA;

-- A secret's incarnation: random, set when it is first written, bound into its ciphertexts.
ALTER TABLE secrets ADD COLUMN incarnation TEXT;

CREATE TABLE audit_checkpoint (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    seq      BIGINT NOT NULL,
    hash     TEXT NOT NULL,
    revoked  BIGINT NOT NULL DEFAULT 0,
    mac      BYTEA NOT NULL
);
