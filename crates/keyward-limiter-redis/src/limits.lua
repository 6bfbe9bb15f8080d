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
--
-- Written for the interpreter's sake: one pass to read, one to judge, flat arrays, no closures
-- or tables per limit (the script runs on every verification).

local max, min, floor, ceil = math.max, math.min, math.floor, math.ceil
local format = string.format
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local key = KEYS[1]

-- A count as Redis stores it: Lua prints 14 significant digits, exact below 1e14.
local function count(v)
  if v < 1e14 then return tostring(v) end
  return format('%.0f', v)
end

-- Every field any limit needs, in one read; first[i]: where limit i's values start.
local fields, first, alg = {}, {}, {}
local nf = 0
for i = 1, n do
  local b = i * 5 - 2
  local pos = ARGV[b]
  first[i] = nf + 1
  if ARGV[b + 1] == '0' then
    alg[i] = 0
    nf = nf + 1
    fields[nf] = 'g' .. pos
  else
    alg[i] = 1
    fields[nf + 1] = 's' .. pos
    fields[nf + 2] = 'p' .. pos
    fields[nf + 3] = 'c' .. pos
    nf = nf + 3
  end
end
local values = redis.call('HMGET', key, unpack(fields))

-- For each limit: its outcome if consumed (r1..r4) and what it has left if nothing is (k2, k3).
local r1, r2, r3, r4, k2, k3 = {}, {}, {}, {}, {}, {}
local writes, nw = {}, 0
local all = true
local keep_ms = 0

for i = 1, n do
  local b = i * 5 - 2
  local period = tonumber(ARGV[b + 2])
  local limit = tonumber(ARGV[b + 3])
  local f = first[i]
  if alg[i] == 0 then
    local burst = tonumber(ARGV[b + 4])
    local interval = max(floor(period / limit), 1)
    local window = interval * burst
    local tat = now
    local g = values[f]
    if g then tat = max(tonumber(g), now) end
    local new_tat = tat + interval * cost
    if new_tat - now <= window then
      r1[i], r2[i], r3[i], r4[i] = 1, floor(max(now + window - new_tat, 0) / interval), new_tat - now, 0
      writes[nw + 1] = fields[f]
      writes[nw + 2] = format('%.0f', new_tat)
      nw = nw + 2
      keep_ms = max(keep_ms, ceil((new_tat - now) / 1000) + 1)
    else
      r1[i], r2[i], r3[i], r4[i] = 0, 0, tat - now, new_tat - window - now
      all = false
    end
    k2[i] = floor(max(now + window - tat, 0) / interval)
    k3[i] = tat - now
  else
    local start = now - (now % period)
    local s = tonumber(values[f] or -1)
    local previous, current = 0, 0
    if s == start then
      previous = tonumber(values[f + 1] or 0)
      current = tonumber(values[f + 2] or 0)
    elseif s + period == start then
      previous = tonumber(values[f + 2] or 0)
    end
    local elapsed = now - start
    local weighted = floor(previous * (period - elapsed) / period)
    local to_next = period - elapsed
    -- Until the limit is back at its full allowance, with `c` counted in this window.
    local reset_now, reset_more = 0, period + to_next
    if previous > 0 then reset_now = to_next end
    if weighted + current + cost <= limit then
      local new_current = current + cost
      r1[i], r2[i], r4[i] = 1, max(limit - weighted - new_current, 0), 0
      if new_current > 0 then r3[i] = reset_more else r3[i] = reset_now end
      writes[nw + 1] = fields[f]
      writes[nw + 2] = format('%.0f', start)
      writes[nw + 3] = fields[f + 1]
      writes[nw + 4] = count(previous)
      writes[nw + 5] = fields[f + 2]
      writes[nw + 6] = count(new_current)
      nw = nw + 6
      keep_ms = max(keep_ms, ceil(2 * period / 1000) + 1)
    else
      local retry
      local room = limit - current - cost
      if previous > 0 and room >= 0 then
        local needed = period - floor(room * period / previous)
        retry = min(max(needed - elapsed, 1), to_next)
      else
        retry = to_next
      end
      r1[i], r2[i], r4[i] = 0, max(limit - weighted - current, 0), retry
      if current > 0 then r3[i] = reset_more else r3[i] = reset_now end
      all = false
    end
    k2[i] = max(limit - weighted - current, 0)
    if current > 0 then k3[i] = reset_more else k3[i] = reset_now end
  end
end

local reply = {}
for i = 1, n do
  local j = i * 4 - 3
  if all or r1[i] == 0 then
    reply[j], reply[j + 1], reply[j + 2], reply[j + 3] = r1[i], r2[i], r3[i], r4[i]
  else
    reply[j], reply[j + 1], reply[j + 2], reply[j + 3] = 1, k2[i], k3[i], 0
  end
end

if all and nw > 0 then
  redis.call('HSET', key, unpack(writes))
  local ttl = redis.call('PTTL', key)
  if ttl < keep_ms then redis.call('PEXPIRE', key, keep_ms) end
end
return reply
