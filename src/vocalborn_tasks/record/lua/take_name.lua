-- take_name: take a worker's node name before it consumes anything (one live holder per name).
-- The name's heartbeat hash is the lock: it exists while its worker lives (the heartbeat renews
-- its TTL).
-- KEYS: worker (the name's heartbeat hash)
-- ARGV: pid, machine, ttl_ms, stale_pid, name
-- (stale_pid: '' if none; name: readers of the hash expect its hostname.)
-- Returns '' when taken, else '<machine> <pid>' of the holder. A holder on the same machine
-- whose pid the caller found gone (stale_pid) is replaced: a worker restarted after a crash
-- need not wait for its predecessor's heartbeat to expire.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pid = redis.call('HGET', KEYS[1], 'pid') or ''
  local machine = redis.call('HGET', KEYS[1], 'machine') or ''
  if ARGV[4] == '' or pid ~= ARGV[4] or machine ~= ARGV[2] then
    return machine .. ' ' .. pid
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'pid', ARGV[1], 'machine', ARGV[2], 'hostname', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ''
