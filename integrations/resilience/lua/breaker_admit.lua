-- May a call go to the provider? Atomic: of all workers, exactly one gets the half-open probe.
-- KEYS[1] breaker hash
-- ARGV[1] token of the caller (its message id), ARGV[2] probe ttl ms, ARGV[3] key ttl ms,
-- ARGV[4] now in ms, or '' for the Redis server's clock (tests inject a clock)
-- Returns {verdict, wait_ms, state}: verdict 1 = call, 2 = call as the probe, 0 = wait wait_ms.
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local key = KEYS[1]

local forced = redis.call('HGET', key, 'forced')
if forced == 'open' then
  local forced_until = tonumber(redis.call('HGET', key, 'forced_until') or '0')
  if forced_until == 0 or now < forced_until then
    return {0, forced_until == 0 and 5000 or math.min(forced_until - now, 5000), 'forced_open'}
  end
  redis.call('HDEL', key, 'forced', 'forced_until')
end

local state = redis.call('HGET', key, 'state') or 'closed'
if state == 'closed' then
  return {1, 0, 'closed'}
end
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', key, 'open_until') or '0')
  if now < open_until then
    return {0, open_until - now, 'open'}
  end
  redis.call('HSET', key, 'state', 'half-open', 'probe', ARGV[1], 'probe_until', now + tonumber(ARGV[2]),
    'changed_at', now)
  redis.call('HINCRBY', key, 'transitions', 1)
  redis.call('PEXPIRE', key, tonumber(ARGV[3]))
  return {2, 0, 'half-open'}
end
-- half_open: one probe at a time; a probe whose worker was lost is replaced when its ttl runs out.
local probe_until = tonumber(redis.call('HGET', key, 'probe_until') or '0')
if now < probe_until and redis.call('HGET', key, 'probe') ~= ARGV[1] then
  return {0, probe_until - now, 'half-open'}
end
redis.call('HSET', key, 'probe', ARGV[1], 'probe_until', now + tonumber(ARGV[2]))
return {2, 0, 'half-open'}
