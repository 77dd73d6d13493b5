-- Take a slot in the provider's token bucket (and its account's), on the Redis server's clock.
-- The bucket is kept as GCRA's theoretical arrival time: at most burst + rate x t calls in any t.
-- A caller that finds no token gets a reserved slot instead, so it is deferred once, to that slot,
-- and not again and again; when it comes back, its reservation lets it through.
-- KEYS[1] bucket, KEYS[2] account bucket, KEYS[3] pause, KEYS[4] live limits, KEYS[5] reservation
-- ARGV[1] rate per s (file), ARGV[2] burst (file), ARGV[3] account rate per s (0: none),
-- ARGV[4] account burst, ARGV[5] how long a reservation outlives its slot, ms,
-- ARGV[6] now in ms, or '' for the Redis server's clock
-- Returns {admitted (1/0), wait_ms, why, granted}: why is 'admitted', 'reserved', 'paused' or 'throttled';
-- granted is, as text in ms, the slot the call holds in the bucket (now, or its reserved slot) or now.
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local reserved = redis.call('GET', KEYS[5])
if reserved then
  local at = tonumber(reserved)
  if now >= at then
    redis.call('DEL', KEYS[5])
    return {1, 0, 'reserved', reserved}
  end
  return {0, math.ceil(at - now), 'reserved', tostring(now)}
end

local paused_until = tonumber(redis.call('GET', KEYS[3]) or '0')
if now < paused_until then
  return {0, math.ceil(paused_until - now), 'paused', tostring(now)}
end

local rate = tonumber(redis.call('HGET', KEYS[4], 'rate') or ARGV[1])
local burst = tonumber(redis.call('HGET', KEYS[4], 'burst') or ARGV[2])

-- Returns the new arrival time and the earliest moment this call conforms to the bucket.
local function slot(key, per_second, size)
  local interval = 1000 / per_second
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  return new_tat, new_tat - size * interval
end

local at = now
local new_tat, conform_at
if rate > 0 then
  new_tat, conform_at = slot(KEYS[1], rate, burst)
  at = math.max(at, conform_at)
end
local account_rate = tonumber(ARGV[3])
local account_tat
if account_rate > 0 then
  local account_conform_at
  account_tat, account_conform_at = slot(KEYS[2], account_rate, tonumber(ARGV[4]))
  at = math.max(at, account_conform_at)
end

if new_tat then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 60000)
end
if account_tat then
  redis.call('SET', KEYS[2], tostring(account_tat), 'PX', math.ceil(account_tat - now) + 60000)
end
if at <= now then
  return {1, 0, 'admitted', tostring(now)}
end
redis.call('SET', KEYS[5], tostring(at), 'PX', math.ceil(at - now) + tonumber(ARGV[5]))
return {0, math.ceil(at - now), 'throttled', tostring(now)}
