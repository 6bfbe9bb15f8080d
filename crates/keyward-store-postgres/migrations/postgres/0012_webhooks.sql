-- keyward schema, version 12: webhooks. The outbox holds every event to deliver, written in the
-- same transaction as the change it reports; an event's id (its webhook-id) is unique, so a
-- notice found due again is not written twice. Endpoints carry their sealed signing secrets and
-- an integrity tag; each event's delivery to each endpoint is a row of its own.

CREATE TABLE outbox (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      TEXT COLLATE "C" NOT NULL UNIQUE,
    ts      BIGINT NOT NULL,
    record  TEXT NOT NULL,           -- JSON; names keys by id and start, never a secret
    mac     BYTEA                     -- the service's integrity tag: an edited event is not sent
);

CREATE TABLE webhook_endpoints (
    id      TEXT COLLATE "C" PRIMARY KEY,
    record  TEXT NOT NULL,           -- JSON; the signing secrets in it are sealed
    mac     BYTEA
);

CREATE TABLE webhook_deliveries (
    endpoint         TEXT COLLATE "C" NOT NULL,
    seq              BIGINT NOT NULL,
    key_id           TEXT COLLATE "C",     -- one key's deliveries go out in order
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at       BIGINT NOT NULL,
    record           TEXT NOT NULL,  -- JSON: attempts, next attempt, last answer
    PRIMARY KEY (endpoint, seq)
);
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries (endpoint, state, seq);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (state, created_at);
