-- keyward schema, version 2: roles, environment policies, and each key's access rules
-- (roles, temporary grants, path rules, network rules, admin scope) as one JSON document.

ALTER TABLE environments ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';

ALTER TABLE keys ADD COLUMN access TEXT NOT NULL DEFAULT '{}';
-- The earliest grant expiry, so the lapse sweeper finds due keys by index.
ALTER TABLE keys ADD COLUMN next_grant_expiry BIGINT;
CREATE INDEX keys_next_grant_expiry ON keys (next_grant_expiry) WHERE next_grant_expiry IS NOT NULL;

CREATE TABLE roles (
    name         TEXT COLLATE "C" PRIMARY KEY,
    description  TEXT,
    permissions  TEXT NOT NULL,          -- JSON array of strings
    builtin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
