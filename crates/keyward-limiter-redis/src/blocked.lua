-- keyward: until when a key is blocked (ms), or 0. KEYS[1] the key's block record.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
if blocked > now then return blocked end
return 0
