-- keyward schema, version 4: where each key's quota stands (its settings are in access).

ALTER TABLE keys ADD COLUMN quota_remaining BIGINT;
ALTER TABLE keys ADD COLUMN quota_period_start BIGINT;
