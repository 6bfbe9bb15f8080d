-- keyward schema, version 3: plans (tiers), named sets of rate limits that keys reference.

CREATE TABLE plans (
    name         TEXT PRIMARY KEY,
    description  TEXT,
    ratelimits   TEXT NOT NULL,          -- JSON array of limits
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;
