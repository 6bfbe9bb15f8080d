-- keyward schema, version 3: plans (tiers), named sets of rate limits that keys reference.

CREATE TABLE plans (
    name         TEXT COLLATE "C" PRIMARY KEY,
    description  TEXT,
    ratelimits   TEXT NOT NULL,          -- JSON array of limits
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
