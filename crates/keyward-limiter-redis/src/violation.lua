-- keyward: count a key's rate-limit violation for its graduated response.
--
-- KEYS[1]  the key's block record (a hash: until (ms), blocks)
-- KEYS[2]  the key's recent violations (a sorted set scored by time, ms)
-- KEYS[3]  a counter that names violations apart
-- ARGV[1]  violations that block, ARGV[2] within (ms), ARGV[3] block (ms),
-- ARGV[4]  blocks that disable (0: never)
--
-- Returns {0, 0} (nothing), {1, until_ms} (blocked) or {2, until_ms} (blocked, and blocked
-- often enough to be disabled). The arithmetic is the service's own (escalation.rs).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local within = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - within)
redis.call('ZADD', KEYS[2], now, redis.call('INCR', KEYS[3]))
redis.call('PEXPIRE', KEYS[2], math.max(within, 1))
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[1]) then
  return {0, 0}
end
redis.call('DEL', KEYS[2])
local blocked = now + tonumber(ARGV[3])
local blocks = redis.call('HINCRBY', KEYS[1], 'blocks', 1)
redis.call('HSET', KEYS[1], 'until', string.format('%.0f', blocked))
-- Block counts are kept for as long as a block lasts, and at least a day.
local ttl = redis.call('PTTL', KEYS[1])
local keep = math.max(tonumber(ARGV[3]), 86400000)
if ttl < keep then redis.call('PEXPIRE', KEYS[1], keep) end
local disable_after = tonumber(ARGV[4])
if disable_after > 0 and blocks >= disable_after then
  redis.call('HSET', KEYS[1], 'blocks', 0)
  return {2, blocked}
end
return {1, blocked}
