-- keyward schema, version 8: the vault. Every value here that is secret is a barrier ciphertext
-- (AES-256-GCM); the term column repeats the keyring term in its header so rewrap can find
-- values sealed under older terms.

CREATE TABLE vault (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    tag          BYTEA NOT NULL,                -- identifies this vault's shares; not secret
    shares       INTEGER NOT NULL,
    threshold    INTEGER NOT NULL,
    sealed_root  BYTEA NOT NULL,                -- the root key, sealed by the unseal key
    term         BIGINT NOT NULL,               -- newest keyring term
    created_at   BIGINT NOT NULL,
    rewrap       TEXT                           -- JSON progress of the latest rewrap
);

CREATE TABLE keyrings (
    scope  TEXT PRIMARY KEY,                    -- env:<name>
    blob   BYTEA NOT NULL                       -- the keyring, sealed by the root key
);

ALTER TABLE environments ADD COLUMN secret BYTEA;
ALTER TABLE environments ADD COLUMN secret_term BIGINT;

CREATE TABLE secrets (
    environment      TEXT NOT NULL REFERENCES environments(name),
    path             TEXT COLLATE "C" NOT NULL,
    owner            TEXT,
    purpose          TEXT,
    max_versions     BIGINT NOT NULL,
    cas_required     BOOLEAN NOT NULL,
    custom           TEXT NOT NULL,             -- JSON object of strings; never a secret
    current_version  BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (environment, path)
);

CREATE TABLE secret_versions (
    environment  TEXT NOT NULL,
    path         TEXT COLLATE "C" NOT NULL,
    version      BIGINT NOT NULL,
    ciphertext   BYTEA,                         -- NULL once destroyed
    term         BIGINT,
    created_at   BIGINT NOT NULL,
    deleted_at   BIGINT,
    destroyed    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (environment, path, version),
    FOREIGN KEY (environment, path) REFERENCES secrets(environment, path) ON DELETE CASCADE
);

CREATE INDEX secret_versions_term ON secret_versions (term) WHERE ciphertext IS NOT NULL;

CREATE TABLE vault_leases (
    id              TEXT COLLATE "C" PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('key', 'secret')),
    path            TEXT COLLATE "C" NOT NULL,    -- keys/<env>/<name> or secrets/<env>/<path>
    environment     TEXT NOT NULL,
    key_id          TEXT,
    secret_version  BIGINT,
    actor           TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    max_expires_at  BIGINT NOT NULL,
    ended_at        BIGINT,
    end_reason      TEXT
);

CREATE INDEX vault_leases_open ON vault_leases (expires_at) WHERE ended_at IS NULL;
CREATE INDEX vault_leases_path ON vault_leases (path, id);
