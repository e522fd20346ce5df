-- begin: start a delivery. Count it, check the revoke set and the stored state and, unless
-- revoked or already finished, list the task as running and store STARTED.
-- KEYS: deliveries, revoked, running, meta
-- ARGV: task_id, deliveries_ttl, running_entry, started_meta, meta_ttl
-- Returns {delivery number, verdict}: 0 run it, 1 revoked, 2 already finished (a redelivery of
-- a task whose outcome is stored: acknowledge it, do not run it again).
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {n, 1} end
if is_final(KEYS[4]) then return {n, 2} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
put_meta(KEYS[4], ARGV[4], ARGV[5])
return {n, 0}
