-- retry: a retryable failure -> RETRY stored, the next attempt queued and this delivery
-- acknowledged, in one step. Celery publishes the next attempt, then stores RETRY, then acks,
-- three writes: a worker killed after the publish had the delivery redelivered besides the
-- retry (two runs), and a failover between them could keep the RETRY and lose the message.
-- KEYS: meta, retried (result db); queue_list, wake, unacked, unacked_index (broker db)
-- ARGV: meta, meta_ttl, stats, delivery_tag, broker_db, result_db, message, retried_ttl,
--       publish, stats_if_revoked
-- (retried: set once this retry is queued, so the same call sent again (a confirmed write
-- whose replicas were slow) queues nothing twice, even after the next attempt has begun.
-- stats/stats_if_revoked as in store.lua; publish '0' leaves publishing RETRY to the caller.)
-- Returns 1 if this RETRY is the stored state (written now, or by this call before), 0 if not:
-- a final state got there first (a cancel; nothing is queued, the delivery is acknowledged
-- all the same) or the next attempt has moved on. The runner publishes RETRY only on 1.
local function apply(stats)
  if stats ~= '' then
    for _, command in ipairs(cjson.decode(stats)) do redis.call(unpack(command)) end
  end
end
local existing = meta_status(KEYS[1])
if existing ~= nil and FINAL[existing] then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    if existing == 'REVOKED' and ARGV[10] ~= '' then apply(ARGV[10]) else apply(ARGV[3]) end
  end
elseif redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[8]) then
  apply(ARGV[3])
  put_meta(KEYS[1], ARGV[1], ARGV[2], ARGV[9])
  redis.call('SELECT', ARGV[5])
  redis.call('LPUSH', KEYS[3], ARGV[7])
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('SELECT', ARGV[6])
end
if ARGV[4] ~= '' then
  redis.call('SELECT', ARGV[5])
  redis.call('HDEL', KEYS[5], ARGV[4])
  redis.call('ZREM', KEYS[6], ARGV[4])
  redis.call('SELECT', ARGV[6])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
