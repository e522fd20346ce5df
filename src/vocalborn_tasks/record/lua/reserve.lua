-- reserve: take the next message and record it as reserved, in one step a SIGKILL cannot split
-- (kombu pops with BRPOP and writes 'unacked' in a second round trip: a worker killed between
-- the two held the only copy). Also applies the acknowledgements the worker made since its
-- last call, and keeps one wake-up token per queued message (see worker/transport.py).
-- KEYS: unacked, unacked_index, lists... (the lists to take from, in order)
-- ARGV: now, token, acks, wake_prefix
-- (now: the unacked index score; token: the queue of the wake-up token the caller consumed,
-- '' for none; acks: JSON list of delivery tags to acknowledge.)
-- Returns {list, message, delivery tag} (tag false: not a task message, handed over to be
-- dropped), or false when every list is empty.
-- (Usually the result store has acknowledged the message already, removing both entries in
-- one step: the index entry is then gone too and is not looked for again.)
for _, tag in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('HDEL', KEYS[1], tag) == 1 then redis.call('ZREM', KEYS[2], tag) end
end
local token = ARGV[2]
for i = 3, #KEYS do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local queue = base_queue(KEYS[i])
    if token ~= queue then
      redis.call('RPOP', ARGV[4] .. queue)
      if token ~= '' then redis.call('LPUSH', ARGV[4] .. token, '1') end
    end
    local ok, message = pcall(cjson.decode, raw)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    if type(tag) ~= 'string' or tag == '' then return {KEYS[i], raw, false} end
    local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
    local exchange = type(info['exchange']) == 'string' and info['exchange'] or ''
    local routing_key = type(info['routing_key']) == 'string' and info['routing_key'] or queue
    -- kombu's own entry format, [message, exchange, routing key], the message kept verbatim.
    redis.call('HSET', KEYS[1], tag,
      '[' .. raw .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    return {KEYS[i], raw, tag}
  end
end
-- Nothing queued: any wake-up token left is stale.
for i = 3, #KEYS do redis.call('DEL', ARGV[4] .. base_queue(KEYS[i])) end
return false
