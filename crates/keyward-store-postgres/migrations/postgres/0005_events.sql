-- keyward schema, version 5: the event log, for webhooks and anomaly detection to consume.
-- Events are telemetry (rate-limit warnings and refusals, guard blocks), not audit entries.

CREATE TABLE events (
    seq      BIGSERIAL PRIMARY KEY,
    ts       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    key_id   TEXT,
    details  TEXT NOT NULL
);
