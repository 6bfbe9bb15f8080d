-- keyward schema, version 14: inventory search. Keys are found by the beginning of their start
-- (what was seen of a leaked key), by range over this index, in byte order whatever the
-- database's collation.

CREATE INDEX keys_start ON keys (start COLLATE "C");
