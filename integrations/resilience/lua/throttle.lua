-- Take a slot in the provider's token bucket (and its account's), on the Redis server's clock.
--
-- Each bucket is the generic cell rate algorithm (a token bucket kept as a theoretical arrival time)
-- run twice:
--   v  on a virtual clock: it hands out slots. A caller that finds no token is given a reserved slot
--      and told to come back then, so a deferred message is deferred once, not again and again. A
--      pause (a 429, a spent quota) moves the virtual clock back by its length, which moves every
--      reserved slot after the pause with the spacing between them kept.
--   a  on the real clock: it lets a call through only if real calls keep to the rate. Messages do not
--      come back exactly on time (a busy worker runs them late); those that bunch up are held a few ms.
--      Its tolerance (ARGV[8]) lets a late message catch up that much, within the headroom.
-- So at most burst + rate x t calls go in any t, whatever the lateness of the messages.
--
-- KEYS[1] bucket hash (v, a, shift, pause), KEYS[2] account bucket hash (v, a), KEYS[3] live limits,
-- KEYS[4] reservation of this message (its virtual slot)
-- ARGV[1] rate per s (file), ARGV[2] burst (file), ARGV[3] account rate per s (0: none),
-- ARGV[4] account burst, ARGV[5] how long a reservation outlives its slot, ms,
-- ARGV[6] now in ms, or '' for the Redis server's clock, ARGV[7] the share of each rate to use
-- (1 - headroom: room for the jitter between taking a slot and the request reaching the provider),
-- ARGV[8] the real clock's tolerance, ms
-- Returns {admitted (1/0), wait_ms, why, granted}: why is 'admitted', 'reserved', 'paused',
-- 'throttled' or 'spacing'; granted is, in ms as text, the real time the call was let through, or now.
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local bucket, account = KEYS[1], KEYS[2]
local share = tonumber(ARGV[7])
local rate = tonumber(redis.call('HGET', KEYS[3], 'rate') or ARGV[1]) * share
local burst = tonumber(redis.call('HGET', KEYS[3], 'burst') or ARGV[2])
local account_rate = tonumber(ARGV[3]) * share
local tolerance = tonumber(ARGV[8])
local account_burst = tonumber(ARGV[4])
local shift = tonumber(redis.call('HGET', bucket, 'shift') or '0')
local paused_until = tonumber(redis.call('HGET', bucket, 'pause') or '0')
local vnow = now - shift
local keep = 24 * 3600 * 1000
local USAGE_SLOT_MS, USAGE_SLOTS = 10000, 7

-- The earliest real time a call conforms to a bucket's real-clock GCRA, and the new arrival time.
local function real_slot(key, per_second, size)
  if per_second <= 0 then
    return now, nil
  end
  local interval = 1000 / per_second
  local tat = math.max(tonumber(redis.call('HGET', key, 'a') or '0'), now)
  return tat + interval - size * interval - tolerance, tat + interval
end

-- Let the call through now if real calls keep to the rate(s); else how long to hold it.
local function through()
  local at, new_a = real_slot(bucket, rate, burst)
  local account_at, account_new_a = real_slot(account, account_rate, account_burst)
  local wait = math.max(at, account_at) - now
  if wait > 0 then
    return wait
  end
  if new_a then
    redis.call('HSET', bucket, 'a', tostring(new_a))
  end
  if account_new_a then
    redis.call('HSET', account, 'a', tostring(account_new_a))
    redis.call('PEXPIRE', account, keep)
  end
  -- Count the call in a ring of 10-second slots (u<i> calls in period p<i>), for the usage of the last
  -- minute that the metrics and `integrations status` read (integrations.resilience.throttle.used).
  local period = math.floor(now / USAGE_SLOT_MS)
  local ring = period % USAGE_SLOTS
  if tonumber(redis.call('HGET', bucket, 'p' .. ring) or '-1') ~= period then
    redis.call('HSET', bucket, 'p' .. ring, period, 'u' .. ring, 1)
  else
    redis.call('HINCRBY', bucket, 'u' .. ring, 1)
  end
  redis.call('PEXPIRE', bucket, keep)
  return 0
end

local reserved = redis.call('GET', KEYS[4])
if reserved then
  local slot = tonumber(reserved)
  local wait = slot - vnow
  if now < paused_until then
    wait = math.max(wait, paused_until - now)
  end
  if wait > 0 then
    -- a pause may have moved the slot later: the reservation must outlive it
    redis.call('PEXPIRE', KEYS[4], math.ceil(wait) + tonumber(ARGV[5]))
    return {0, math.ceil(wait), now < paused_until and 'paused' or 'reserved', tostring(now)}
  end
  local wait = through()
  if wait > 0 then
    return {0, math.ceil(wait), 'spacing', tostring(now)}
  end
  redis.call('DEL', KEYS[4])
  return {1, 0, 'reserved', tostring(now)}
end

-- A new caller takes the next virtual slot of each bucket (after the pause, if one is on).
local start = vnow
if now < paused_until then
  start = paused_until - shift
end
local function virtual_slot(key, per_second, size)
  if per_second <= 0 then
    return start, nil
  end
  local interval = 1000 / per_second
  local tat = math.max(tonumber(redis.call('HGET', key, 'v') or '0'), start)
  return math.max(tat + interval - size * interval, start), tat + interval
end
local slot, new_v = virtual_slot(bucket, rate, burst)
local account_slot, account_new_v = virtual_slot(account, account_rate, account_burst)
slot = math.max(slot, account_slot)
if new_v then
  redis.call('HSET', bucket, 'v', tostring(new_v))
end
if account_new_v then
  redis.call('HSET', account, 'v', tostring(account_new_v))
  redis.call('PEXPIRE', account, keep)
end
redis.call('PEXPIRE', bucket, keep)

if slot <= vnow then
  local wait = through()
  if wait <= 0 then
    return {1, 0, 'admitted', tostring(now)}
  end
  slot = vnow + wait
end
redis.call('SET', KEYS[4], tostring(slot), 'PX', math.ceil(slot - vnow) + tonumber(ARGV[5]))
return {0, math.ceil(slot - vnow), now < paused_until and 'paused' or 'throttled', tostring(now)}
