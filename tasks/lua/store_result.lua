-- Store a task's result as Celery's Redis result backend does (SET, with an expiry unless ARGV[2] is '',
-- then PUBLISH on the key's channel for the callers waiting on it), unless the result stored there is
-- already a success, which nothing overwrites (the late state of a task delivered twice, say).
-- KEYS[1] the task's result key; ARGV[1] the result as the backend encoded it (JSON); ARGV[2] its expiry
-- in seconds, or ''.
-- Returns 1 when stored, 0 when a success was there already.
local current = redis.call('GET', KEYS[1])
if current then
  local decoded, meta = pcall(cjson.decode, current)
  if decoded and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
