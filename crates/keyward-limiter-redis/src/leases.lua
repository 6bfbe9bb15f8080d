-- keyward: take a concurrency lease for a key, if fewer than its limit are in flight.
--
-- KEYS[1]  the key's leases (a sorted set: lease id scored by when it lapses, ms)
-- KEYS[2]  the lease's holder record
-- ARGV[1]  lease id, ARGV[2] limit, ARGV[3] lease timeout (ms), ARGV[4] holder ("key env")
--
-- Returns {1, lapses_at_ms} when taken, {0, earliest_lapse_ms} when the limit is reached.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2])}
end
local timeout = tonumber(ARGV[3])
local lapses = now + timeout
redis.call('ZADD', KEYS[1], lapses, ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < timeout then redis.call('PEXPIRE', KEYS[1], timeout) end
redis.call('SET', KEYS[2], ARGV[4], 'PX', timeout)
return {1, lapses}
