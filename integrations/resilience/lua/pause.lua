-- Pause a provider for every worker until now + ARGV[1] ms, unless it is already paused for longer.
-- KEYS[1] pause. Returns the pause's end, ms on the Redis clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_ then
  return current
end
redis.call('SET', KEYS[1], until_, 'PX', tonumber(ARGV[1]))
return until_
