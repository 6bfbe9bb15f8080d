-- keyward schema, version 8: the vault. Every value here that is secret is a barrier ciphertext
-- (AES-256-GCM); the term column repeats the keyring term in its header so rewrap can find
-- values sealed under older terms.

CREATE TABLE vault (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    tag          BLOB NOT NULL,                 -- identifies this vault's shares; not secret
    shares       INTEGER NOT NULL,
    threshold    INTEGER NOT NULL,
    sealed_root  BLOB NOT NULL,                 -- the root key, sealed by the unseal key
    term         INTEGER NOT NULL,              -- newest keyring term
    created_at   INTEGER NOT NULL,
    rewrap       TEXT                           -- JSON progress of the latest rewrap
) STRICT;

CREATE TABLE keyrings (
    scope  TEXT PRIMARY KEY,                    -- env:<name>
    blob   BLOB NOT NULL                        -- the keyring, sealed by the root key
) STRICT;

ALTER TABLE environments ADD COLUMN secret BLOB;
ALTER TABLE environments ADD COLUMN secret_term INTEGER;

CREATE TABLE secrets (
    environment      TEXT NOT NULL REFERENCES environments(name),
    path             TEXT NOT NULL,
    owner            TEXT,
    purpose          TEXT,
    max_versions     INTEGER NOT NULL,
    cas_required     INTEGER NOT NULL,
    custom           TEXT NOT NULL,             -- JSON object of strings; never a secret
    current_version  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (environment, path)
) STRICT;

CREATE TABLE secret_versions (
    environment  TEXT NOT NULL,
    path         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    ciphertext   BLOB,                          -- NULL once destroyed
    term         INTEGER,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER,
    destroyed    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (environment, path, version),
    FOREIGN KEY (environment, path) REFERENCES secrets(environment, path) ON DELETE CASCADE
) STRICT;

CREATE INDEX secret_versions_term ON secret_versions (term) WHERE ciphertext IS NOT NULL;

CREATE TABLE vault_leases (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('key', 'secret')),
    path            TEXT NOT NULL,              -- keys/<env>/<name> or secrets/<env>/<path>
    environment     TEXT NOT NULL,
    key_id          TEXT,
    secret_version  INTEGER,
    actor           TEXT NOT NULL,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    max_expires_at  INTEGER NOT NULL,
    ended_at        INTEGER,
    end_reason      TEXT
) STRICT;

CREATE INDEX vault_leases_open ON vault_leases (expires_at) WHERE ended_at IS NULL;
CREATE INDEX vault_leases_path ON vault_leases (path, id);

-- Written by Store::sync: a durable commit that makes earlier relaxed ones (read audits) durable.
CREATE TABLE sync_marker (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   INTEGER NOT NULL
) STRICT;
