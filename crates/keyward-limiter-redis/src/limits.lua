-- keyward: judge one request against all of a key's applicable rate limits, atomically.
--
-- KEYS[1]  the key's limit state (a hash; one set of fields per limit position)
-- ARGV[1]  cost
-- ARGV[2]  how many limits follow, then five values for each:
--          position, algorithm (0: GCRA, 1: sliding window), period (µs), limit, burst
--
-- Time is the server's (TIME, in microseconds), so every node counts on one clock. The request
-- consumes from every limit if all admit it, from none otherwise. Returns four integers per
-- limit: admitted (1/0), remaining, µs until full allowance, µs until a retry may succeed.
-- The arithmetic is the service's own (keyward_core::ratelimit), in microseconds.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local key = KEYS[1]

local outcomes = {}
local writes = {}
local all = true
local keep_ms = 0

-- Every field any limit needs, in one read.
local fields = {}
for i = 0, n - 1 do
  local b = 3 + i * 5
  local pos = ARGV[b]
  if tonumber(ARGV[b + 1]) == 0 then
    fields[#fields + 1] = 'g' .. pos
  else
    fields[#fields + 1] = 's' .. pos
    fields[#fields + 1] = 'p' .. pos
    fields[#fields + 1] = 'c' .. pos
  end
end
local values = redis.call('HMGET', key, unpack(fields))
local stored = {}
for i, f in ipairs(fields) do stored[f] = values[i] end

for i = 0, n - 1 do
  local b = 3 + i * 5
  local pos = ARGV[b]
  local alg = tonumber(ARGV[b + 1])
  local period = tonumber(ARGV[b + 2])
  local limit = tonumber(ARGV[b + 3])
  local burst = tonumber(ARGV[b + 4])
  local o = {}
  if alg == 0 then
    local interval = math.max(math.floor(period / limit), 1)
    local window = interval * burst
    local tat = now
    local g = stored['g' .. pos]
    if g then tat = math.max(tonumber(g), now) end
    local new_tat = tat + interval * cost
    local admitted = new_tat - now <= window
    if admitted then
      o = {1, math.floor(math.max(now + window - new_tat, 0) / interval), new_tat - now, 0}
      writes[#writes + 1] = {'g' .. pos, new_tat}
      keep_ms = math.max(keep_ms, math.ceil((new_tat - now) / 1000) + 1)
    else
      o = {0, 0, tat - now, new_tat - window - now}
    end
    -- What the limit has left if another refuses and nothing is consumed.
    o[5] = math.floor(math.max(now + window - tat, 0) / interval)
    o[6] = tat - now
  else
    local start = now - (now % period)
    local s = tonumber(stored['s' .. pos] or -1)
    local previous, current = 0, 0
    if s == start then
      previous = tonumber(stored['p' .. pos] or 0)
      current = tonumber(stored['c' .. pos] or 0)
    elseif s + period == start then
      previous = tonumber(stored['c' .. pos] or 0)
    end
    local elapsed = now - start
    local weighted = math.floor(previous * (period - elapsed) / period)
    local admitted = weighted + current + cost <= limit
    local new_current = current
    if admitted then new_current = current + cost end
    local to_next = period - elapsed
    local retry = 0
    if not admitted then
      local room = limit - current - cost
      if previous > 0 and room >= 0 then
        local needed = period - math.floor(room * period / previous)
        retry = math.min(math.max(needed - elapsed, 1), to_next)
      else
        retry = to_next
      end
    end
    local function reset(c)
      if c > 0 then return period + to_next end
      if previous > 0 then return to_next end
      return 0
    end
    o = {admitted and 1 or 0, math.max(limit - weighted - new_current, 0), reset(new_current), retry}
    o[5] = math.max(limit - weighted - current, 0)
    o[6] = reset(current)
    if admitted then
      writes[#writes + 1] = {'s' .. pos, start}
      writes[#writes + 1] = {'p' .. pos, previous}
      writes[#writes + 1] = {'c' .. pos, new_current}
      keep_ms = math.max(keep_ms, math.ceil(2 * period / 1000) + 1)
    end
  end
  if o[1] == 0 then all = false end
  outcomes[#outcomes + 1] = o
end

local reply = {}
for _, o in ipairs(outcomes) do
  if all or o[1] == 0 then
    reply[#reply + 1] = o[1]
    reply[#reply + 1] = o[2]
    reply[#reply + 1] = o[3]
    reply[#reply + 1] = o[4]
  else
    reply[#reply + 1] = 1
    reply[#reply + 1] = o[5]
    reply[#reply + 1] = o[6]
    reply[#reply + 1] = 0
  end
end

if all and #writes > 0 then
  local args = {}
  for _, w in ipairs(writes) do
    args[#args + 1] = w[1]
    args[#args + 1] = string.format('%.0f', w[2])
  end
  redis.call('HSET', key, unpack(args))
  local ttl = redis.call('PTTL', key)
  if ttl < keep_ms then redis.call('PEXPIRE', key, keep_ms) end
end
return reply
