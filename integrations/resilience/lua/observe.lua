-- How a call went, told to the breaker and the throttle in one round trip.
-- Composed (integrations.resilience.scripts.composed) after the functions breaker_record and pause,
-- each the script of that name taking its own KEYS and ARGV.
-- KEYS[1] breaker hash, KEYS[2] breaker window hash, KEYS[3] bucket hash, KEYS[4] usage-warned flag
-- ARGV[1..10] breaker_record's arguments
-- ARGV[11] pause the provider for this many ms ('' for no pause), ARGV[12] the pause's clock ('' for the
-- Redis server's), ARGV[13] set the usage-warned flag for this many ms ('' for no usage warning)
-- Returns {breaker_record's answer, pause's answer or {}, 1 if this call set the usage-warned flag else 0}
local recorded = breaker_record({KEYS[1], KEYS[2]}, {unpack(ARGV, 1, 10)})
local paused = {}
if ARGV[11] ~= '' then
  paused = pause({KEYS[3]}, {ARGV[11], ARGV[12]})
end
local warned = 0
if ARGV[13] ~= '' and redis.call('SET', KEYS[4], '1', 'NX', 'PX', tonumber(ARGV[13])) then
  warned = 1
end
return {recorded, paused, warned}
