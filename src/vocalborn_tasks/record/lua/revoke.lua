-- revoke: persist a cancel and store REVOKED for a task that has not finished, publishing it so
-- waiters resolve now.
-- KEYS: revoked, meta, marker
-- ARGV: task_id, revoked_at, revoked_meta, meta_ttl
-- Returns 1 if REVOKED was stored, 0 if the task had already finished (left as it is).
if is_final(KEYS[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
put_meta(KEYS[2], ARGV[3], ARGV[4])
mark_done(KEYS[3], 'REVOKED')
return 1
