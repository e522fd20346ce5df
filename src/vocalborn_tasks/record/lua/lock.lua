-- lock: take or extend a lock held under a token (set when free, extended when ours).
-- KEYS: lock
-- ARGV: token, ttl_ms
-- Returns 1 if the caller holds it now.
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
