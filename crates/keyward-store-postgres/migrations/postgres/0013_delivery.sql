-- keyward schema, version 13: delivery targets. A successor the scheduler made for a key that
-- names a delivery target waits in its handover until it is written there: the attempts, when
-- the next is due, and why the last failed (never a secret).

ALTER TABLE key_handovers ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE key_handovers ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE key_handovers ADD COLUMN last_error TEXT;
CREATE INDEX key_handovers_due ON key_handovers (next_attempt_at);
