-- purge: take up to a batch of a queue's waiting messages and end each one's task: REVOKED
-- with code 'purged' (stored and published, so waiters resolve at once), the submit marker
-- marked done, the practice record's in-flight slot released when it still holds that task,
-- and one wake-up token dropped per message. A task already final keeps its state. Called in
-- a loop (record/purge.py), one bounded batch per call, so a long queue never blocks the
-- server for long.
-- KEYS: wake, lists... (broker db; the queue's lists in consumption order, base first)
-- ARGV: limit, broker_db, result_db, meta_prefix, marker_prefix, inflight_prefix,
--       revoked_head, revoked_tail, meta_ttl, owned_inflight_prefix
-- (limit: the batch size; revoked_head/revoked_tail: the REVOKED meta around the task id;
-- owned_inflight_prefix: where an owned task's slot is, followed by '<owner>:<record>'.)
-- Returns {messages removed, messages still in the lists}.
local limit = tonumber(ARGV[1])
local ids = {}
local taken = 0
local left = 0
for i = 2, #KEYS do
  if taken < limit then
    local batch = redis.call('LRANGE', KEYS[i], -(limit - taken), -1)
    if #batch > 0 then
      redis.call('LTRIM', KEYS[i], 0, -#batch - 1)
      taken = taken + #batch
      for _, raw in ipairs(batch) do
        local ok, message = pcall(cjson.decode, raw)
        local headers = ok and type(message) == 'table' and message['headers']
        local id = type(headers) == 'table' and headers['id']
        if type(id) == 'string' and id ~= '' then ids[#ids + 1] = id end
      end
    end
  end
  left = left + redis.call('LLEN', KEYS[i])
end
if left == 0 then
  redis.call('DEL', KEYS[1])
elseif taken > 0 then
  redis.call('LTRIM', KEYS[1], 0, -taken - 1)
end
redis.call('SELECT', ARGV[3])
for _, id in ipairs(ids) do
  local marker = ARGV[5] .. id
  if not is_final(ARGV[4] .. id) then
    put_meta(ARGV[4] .. id, ARGV[7] .. cjson.encode(id) .. ARGV[8], ARGV[9])
    mark_done(marker, 'REVOKED')
  end
  local record = redis.call('HGET', marker, 'record')
  if record then
    local owner = redis.call('HGET', marker, 'owner')
    local slot = ARGV[6] .. record
    if owner then slot = ARGV[10] .. owner .. ':' .. record end
    if redis.call('GET', slot) == id then redis.call('DEL', slot) end
  end
end
redis.call('SELECT', ARGV[2])
return {taken, left}
