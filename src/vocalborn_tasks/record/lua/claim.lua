-- claim: take a practice record's in-flight slot, write the marker and queue the message, in
-- one step (a slot never points at a message that was not queued). A slot whose task is still
-- queued or running is kept: its id is returned and nothing is queued (unless forced).
-- KEYS: inflight, marker, epoch (result db); queue, wake (broker db)
-- ARGV: task_id, marker_ttl, task_name, queue, submitted_at, force, meta_prefix,
--       marker_prefix, practice_record_id, broker_db, owner, message
-- (force: '1' replaces a live slot. owner: the owner's digest, '' for none; the inflight key
-- is that owner's slot, and the marker records it so reads can be scoped to it.)
local cur = redis.call('GET', KEYS[1])
-- This very claim sent again (a confirmed write whose replicas were slow): already queued.
if cur == ARGV[1] then return cur end
if cur and ARGV[6] ~= '1' then
  local status = meta_status(ARGV[7] .. cur)
  local live
  if status then
    live = not FINAL[status]
  else
    local marker = ARGV[8] .. cur
    live = redis.call('EXISTS', marker) == 1 and redis.call('HEXISTS', marker, 'done') == 0
  end
  if live then return cur end
end
ensure_epoch(KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], 'name', ARGV[3], 'queue', ARGV[4], 't', ARGV[5], 'record', ARGV[9])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[2], 'owner', ARGV[11]) end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SELECT', ARGV[10])
redis.call('LPUSH', KEYS[4], ARGV[12])
redis.call('LPUSH', KEYS[5], '1')
return ARGV[1]
