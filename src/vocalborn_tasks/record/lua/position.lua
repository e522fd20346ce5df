-- position: where a task's message waits, in the order workers consume a queue's lists
-- (a read of the record: changes nothing).
-- KEYS: lists... (the queue's lists, base first)
-- ARGV: task_id
-- Returns {list index (0 = absent), messages ahead, messages in all the lists}.
local ahead = 0
local found = 0
local total = 0
for i, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  total = total + n
  if found == 0 and n > 0 then
    local items = redis.call('LRANGE', key, 0, -1)
    for j = #items, 1, -1 do
      local raw = items[j]
      if found == 0 and string.find(raw, ARGV[1], 1, true) then
        local ok, msg = pcall(cjson.decode, raw)
        if ok and type(msg) == 'table' and type(msg['headers']) == 'table'
            and msg['headers']['id'] == ARGV[1] then
          found = i
          ahead = ahead + (#items - j)
        end
      end
    end
    if found == 0 then ahead = ahead + #items end
  end
end
return {found, ahead, total}
