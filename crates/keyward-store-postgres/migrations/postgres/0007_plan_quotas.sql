-- keyward schema, version 7: a plan's quota (credits and their refill) for the keys on it.

ALTER TABLE plans ADD COLUMN quota TEXT;
