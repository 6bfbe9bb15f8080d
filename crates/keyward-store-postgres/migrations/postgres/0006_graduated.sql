-- keyward schema, version 6: a plan's graduated response (warning threshold, blocking after
-- repeated violations, optional disabling), as JSON.

ALTER TABLE plans ADD COLUMN graduated TEXT;
