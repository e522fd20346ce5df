-- restore (the reaper's step): move one reserved message of a dead worker back to its queue
-- (its priority list, as kombu's own restore does), if it is still reserved, with a wake-up
-- token. The message goes back byte for byte: re-encoding it with cjson would turn empty
-- arrays into objects and round long numbers.
-- KEYS: unacked, unacked_index
-- ARGV: delivery_tag, wake_prefix
-- Returns 1 if restored.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local ok, entry = pcall(cjson.decode, raw)
if not ok or type(entry) ~= 'table' then return 0 end
local payload, exchange, queue = entry[1], entry[2], entry[3]
if type(payload) ~= 'table' or type(queue) ~= 'string' or queue == '' then return 0 end
-- The entry is [message, exchange, routing key]: cut the message out verbatim.
local message = nil
for _, sep in ipairs({',', ', '}) do
  local tail = sep .. cjson.encode(exchange) .. sep .. cjson.encode(queue) .. ']'
  if string.sub(raw, -#tail) == tail then
    message = string.sub(raw, 2, -#tail - 1)
    break
  end
end
if message == nil then message = cjson.encode(payload) end
local props = payload['properties']
local priority = type(props) == 'table' and tonumber(props['priority']) or 0
redis.call('RPUSH', priority_list(queue, priority or 0), message)
redis.call('LPUSH', ARGV[2] .. queue, '1')
return 1
