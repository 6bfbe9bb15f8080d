-- keyward: end a concurrency lease. KEYS[1] the key's leases, KEYS[2] the lease's holder
-- record, ARGV[1] the lease id. Returns 1 if the lease was live, 0 if it had lapsed or ended.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapses = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if lapses and tonumber(lapses) > now then return 1 end
return 0
