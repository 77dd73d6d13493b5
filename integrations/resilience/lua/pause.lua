-- Pause a provider for every worker until now + ARGV[1] ms, unless it is already paused for longer.
-- The bucket's virtual clock moves back by what the pause adds, so every reserved slot moves after it.
-- KEYS[1] bucket hash; ARGV[2] now in ms, or '' for the Redis server's clock.
-- Returns {the pause's end, now}, in ms: the caller learns how long it lasts without asking the clock again.
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
if current >= until_ then
  return {current, now}
end
local added = until_ - math.max(current, now)
redis.call('HINCRBYFLOAT', KEYS[1], 'shift', added)
redis.call('HSET', KEYS[1], 'pause', until_)
redis.call('PEXPIRE', KEYS[1], 24 * 3600 * 1000)
return {until_, now}
