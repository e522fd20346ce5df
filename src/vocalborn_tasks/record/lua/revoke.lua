-- revoke: persist a cancel and store REVOKED for a task that has not finished, publishing it so
-- waiters resolve now. With terminate, the id also goes to the terminate set (which
-- heartbeats check) and on the terminate channel (which heartbeat threads listen to): a
-- running copy stops at once.
-- KEYS: revoked, meta, marker, terminate, terminate_channel
-- ARGV: task_id, revoked_at, revoked_meta, meta_ttl, terminate, publish
-- (terminate: '1' stop a running copy, '0' let it stop at its next progress report.
-- publish: '0' leaves publishing REVOKED to the caller, after replicas confirmed it.)
-- Returns 1 if REVOKED was stored (now, or by this call sent before: the same meta is there),
-- 0 if the task had already finished (left as it is; the runner publishes only on 1).
if is_final(KEYS[2]) then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
put_meta(KEYS[2], ARGV[3], ARGV[4], ARGV[6])
mark_done(KEYS[3], 'REVOKED')
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('PUBLISH', KEYS[5], ARGV[1])
end
return 1
