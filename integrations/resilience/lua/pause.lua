-- Pause a provider for every worker until now + ARGV[1] ms, unless it is already paused for longer.
-- KEYS[1] pause; ARGV[2] now in ms, or '' for the Redis server's clock. Returns the pause's end, in ms.
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_ then
  return current
end
redis.call('SET', KEYS[1], until_, 'PX', tonumber(ARGV[1]))
return until_
