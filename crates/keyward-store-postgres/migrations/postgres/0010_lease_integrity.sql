-- keyward schema, version 10: leases carry an integrity tag too. A lease names the key it
-- renews and revokes and how far it may be renewed, so it is security state like a key's own
-- row. Leases written before this version have none: the service lets them lapse but does not
-- renew or revoke through them.

ALTER TABLE vault_leases ADD COLUMN mac BYTEA;
