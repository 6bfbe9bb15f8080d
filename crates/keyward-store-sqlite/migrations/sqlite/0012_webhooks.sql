-- keyward schema, version 12: webhooks. The outbox holds every event to deliver, written in the
-- same transaction as the change it reports; an event's id (its webhook-id) is unique, so a
-- notice found due again is not written twice. Endpoints carry their sealed signing secrets and
-- an integrity tag; each event's delivery to each endpoint is a row of its own.

CREATE TABLE outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    ts      INTEGER NOT NULL,
    record  TEXT NOT NULL,           -- JSON; names keys by id and start, never a secret
    mac     BLOB                     -- the service's integrity tag: an edited event is not sent
) STRICT;

CREATE TABLE webhook_endpoints (
    id      TEXT PRIMARY KEY,
    record  TEXT NOT NULL,           -- JSON; the signing secrets in it are sealed
    mac     BLOB
) STRICT;

CREATE TABLE webhook_deliveries (
    endpoint         TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    key_id           TEXT,     -- one key's deliveries go out in order
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at       INTEGER NOT NULL,
    record           TEXT NOT NULL,  -- JSON: attempts, next attempt, last answer
    PRIMARY KEY (endpoint, seq)
) STRICT;
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (endpoint, state, seq);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (state, created_at);
