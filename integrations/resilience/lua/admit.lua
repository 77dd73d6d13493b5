-- May a call go to the provider? The breaker, then the throttle, asked in one round trip.
-- Composed (integrations.resilience.scripts.composed) after the functions breaker_admit, throttle and
-- breaker_release, each the script of that name taking its own KEYS and ARGV.
-- KEYS[1] breaker hash; KEYS[2..5] the throttle's keys (bucket, account bucket, limits, reservation)
-- ARGV[1..4] breaker_admit's arguments; ARGV[5..12] throttle's
-- Returns {breaker_admit's answer, throttle's answer}; the throttle is not asked when the breaker says
-- wait (its answer is then empty), and a probe the throttle holds back is given up at once.
local breaker = breaker_admit({KEYS[1]}, {unpack(ARGV, 1, 4)})
if tonumber(breaker[1]) == 0 then
  return {breaker, {}}
end
local take = throttle({unpack(KEYS, 2, 5)}, {unpack(ARGV, 5, 12)})
if tonumber(take[1]) == 0 and tonumber(breaker[1]) == 2 then
  breaker_release({KEYS[1]}, {ARGV[1]})
end
return {breaker, take}
