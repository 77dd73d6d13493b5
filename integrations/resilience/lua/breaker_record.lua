-- Record how a call went, and make the transition it causes. Atomic: concurrent failures lose no
-- count, and the call that crosses the threshold is the only one that opens the breaker.
-- KEYS[1] breaker hash, KEYS[2] window hash
-- ARGV[1] token, ARGV[2] failed (1/0), ARGV[3] fail_max, ARGV[4] failure_rate, ARGV[5] min_calls,
-- ARGV[6] window ms, ARGV[7] slots in the window, ARGV[8] reset_timeout ms, ARGV[9] key ttl ms,
-- ARGV[10] now in ms, or '' for the Redis server's clock
-- Returns {transition, state, consecutive}: transition is 'opened', 'closed' or ''.
local now
if ARGV[10] ~= '' then
  now = tonumber(ARGV[10])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local key, win = KEYS[1], KEYS[2]
local failed = ARGV[2] == '1'
local fail_max, failure_rate, min_calls = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window, slots, reset, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

-- The sliding window: `slots` slots of window/slots ms, each tagged with the period it counts.
local width = window / slots
local period = math.floor(now / width)
local slot = period % slots
if tonumber(redis.call('HGET', win, 't' .. slot) or '-1') ~= period then
  redis.call('HSET', win, 't' .. slot, period, 'c' .. slot, 0, 'f' .. slot, 0)
end
redis.call('HINCRBY', win, 'c' .. slot, 1)
if failed then
  redis.call('HINCRBY', win, 'f' .. slot, 1)
end
redis.call('PEXPIRE', win, math.floor(window * 2))
redis.call('HINCRBY', key, failed and 'failures' or 'successes', 1)

local function open()
  redis.call('HSET', key, 'state', 'open', 'opened_at', now, 'open_until', now + reset, 'changed_at', now,
    'probe', '', 'probe_until', 0)
  redis.call('HINCRBY', key, 'transitions', 1)
end

local state = redis.call('HGET', key, 'state') or 'closed'
local transition = ''
local consecutive
if failed then
  consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
else
  redis.call('HSET', key, 'consecutive', 0)
  consecutive = 0
end

if state == 'half-open' and redis.call('HGET', key, 'probe') == ARGV[1] then
  if failed then
    open()
    transition = 'opened'
  else
    redis.call('HSET', key, 'state', 'closed', 'changed_at', now, 'probe', '', 'probe_until', 0)
    redis.call('HINCRBY', key, 'transitions', 1)
    redis.call('DEL', win)
    transition = 'closed'
  end
elseif state == 'closed' and failed then
  local trip = consecutive >= fail_max
  if not trip then
    local calls, failures = 0, 0
    for i = 0, slots - 1 do
      local tagged = tonumber(redis.call('HGET', win, 't' .. i) or '-1')
      if tagged > period - slots then
        calls = calls + tonumber(redis.call('HGET', win, 'c' .. i) or '0')
        failures = failures + tonumber(redis.call('HGET', win, 'f' .. i) or '0')
      end
    end
    trip = calls >= min_calls and failures >= failure_rate * calls
  end
  if trip then
    open()
    transition = 'opened'
  end
end
if redis.call('HGET', key, 'forced') ~= 'open' then  -- a maintenance window lasts until it is closed
  redis.call('PEXPIRE', key, ttl)
end
return {transition, redis.call('HGET', key, 'state') or 'closed', consecutive}
