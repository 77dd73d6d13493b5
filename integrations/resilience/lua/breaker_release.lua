-- Give up the half-open probe if the caller holds it, so another worker may take it at once.
-- KEYS[1] breaker hash; ARGV[1] token of the caller (its message id).
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'probe', '', 'probe_until', 0)
end
