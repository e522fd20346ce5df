-- restore (the reaper's step): move one reserved message of a dead worker back to its queue,
-- if it is still reserved, with a wake-up token. KEYS: unacked hash, unacked index.
-- ARGV: delivery tag, wake-up key prefix. Returns 1 if restored.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local ok, entry = pcall(cjson.decode, raw)
if not ok or type(entry) ~= 'table' then return 0 end
local payload, queue = entry[1], entry[3]
if type(payload) ~= 'table' or type(queue) ~= 'string' or queue == '' then return 0 end
if type(payload['headers']) == 'table' then payload['headers']['redelivered'] = true end
if type(payload['properties']) == 'table' and type(payload['properties']['delivery_info']) == 'table' then
  payload['properties']['delivery_info']['redelivered'] = true
end
redis.call('RPUSH', queue, cjson.encode(payload))
redis.call('LPUSH', ARGV[2] .. queue, '1')
return 1
