-- Shared by every script of the task record (vocalborn_tasks/record). Loaded in front of each.
-- Generated above this line from Python (record/scripts.py), so each rule has one definition:
-- FINAL, the final states (once one is stored, no script replaces it: a late copy of a task, a
-- progress report or a second cancel cannot undo an outcome a caller may already have seen);
-- PRIORITY_SEP and PRIORITY_STEPS, how kombu names a queue's priority lists.

-- The Celery status of a stored meta value (GET's reply): nil when there is none, 'PENDING'
-- when unreadable.
local function status_of(raw)
  if not raw then return nil end
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and type(decoded['status']) == 'string' then
    return decoded['status']
  end
  return 'PENDING'
end

-- The Celery status stored at a meta key (as status_of).
local function meta_status(key)
  return status_of(redis.call('GET', key))
end

local function is_final(key)
  local status = meta_status(key)
  return status ~= nil and FINAL[status] == true
end

-- Store a meta and publish it on the channel of the same name (where every waiter listens),
-- unless publish is '0' (the caller publishes once replicas confirmed the write).
local function put_meta(key, value, ttl, publish)
  ttl = tonumber(ttl)
  if ttl and ttl > 0 then
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  if publish ~= '0' then redis.call('PUBLISH', key, value) end
end

-- Record the final state on the submit marker, so an expired result reads EXPIRED, not unknown.
local function mark_done(marker, status)
  if FINAL[status] and redis.call('EXISTS', marker) == 1 then
    redis.call('HSET', marker, 'done', status)
  end
end

-- The epoch: when this server's memory of tasks began (written once; gone with a data loss).
-- Looked for first: every submit calls this, and one EXISTS is cheaper than TIME + SET NX.
local function ensure_epoch(key)
  if redis.call('EXISTS', key) == 1 then return end
  local now = redis.call('TIME')
  redis.call('SET', key, now[1] .. string.format('%06d', tonumber(now[2])), 'NX')
end

-- kombu names a queue's priority lists '<queue>' .. PRIORITY_SEP .. '<step>'. PRIORITY_SEP and
-- PRIORITY_STEPS are defined in front of this prelude, from record/keys.py (the one copy).

-- The queue a (priority) list belongs to (a plain find: the separator is not a pattern).
local function base_queue(list)
  local at = string.find(list, PRIORITY_SEP, 1, true)
  if at and string.match(string.sub(list, at + #PRIORITY_SEP), '^%d+$') then
    return string.sub(list, 1, at - 1)
  end
  return list
end

-- The list kombu keeps a message of ``priority`` of ``queue`` in (the highest step <= it).
local function priority_list(queue, priority)
  local step = 0
  for _, s in ipairs(PRIORITY_STEPS) do if priority >= s then step = s end end
  if step > 0 then return queue .. PRIORITY_SEP .. step end
  return queue
end
