-- store: the result backend's write. Apply the run's statistics, store the state unless a final
-- one is there, mark the submit marker, and, when the state ends this delivery, acknowledge
-- the message (remove its 'unacked' entry): the outcome and the acknowledgement are one step,
-- so a worker killed in between can neither lose the result nor have the task run again.
-- KEYS: meta, marker (result db); unacked, unacked_index (broker db)
-- ARGV: meta, meta_ttl, state, stats, delivery_tag, broker_db, result_db, stats_if_revoked,
--       publish
-- (meta_ttl 0: none; stats: JSON list of commands or ''; delivery_tag '' for none;
-- stats_if_revoked: the statistics to apply instead when a cancel got there first, REVOKED
-- stored: the run then counts as revoked, the outcome every caller sees; '' for none.
-- publish: '0' leaves publishing to the caller, after replicas confirmed the write. The same
-- store sent again, which a confirmed write does when replicas were slow, finds its own meta
-- there: it acknowledges again but counts no statistics twice.)
-- Returns 1 if this meta is the stored one (now, or by this store sent before), 0 if another
-- final state was already there (the runner publishes only on 1).
local current = redis.call('GET', KEYS[1])
local existing = status_of(current)
local stats = ARGV[4]
if existing == 'REVOKED' and ARGV[8] ~= nil and ARGV[8] ~= '' then stats = ARGV[8] end
local again = current == ARGV[1]
if stats ~= '' and not again then
  for _, command in ipairs(cjson.decode(stats)) do redis.call(unpack(command)) end
end
local stored = 0
if existing == nil or not FINAL[existing] then
  put_meta(KEYS[1], ARGV[1], ARGV[2], ARGV[9])
  mark_done(KEYS[2], ARGV[3])
  stored = 1
elseif again then
  stored = 1
end
if ARGV[5] ~= '' and (FINAL[ARGV[3]] or ARGV[3] == 'RETRY') then
  redis.call('SELECT', ARGV[6])
  redis.call('HDEL', KEYS[3], ARGV[5])
  redis.call('ZREM', KEYS[4], ARGV[5])
  redis.call('SELECT', ARGV[7])
end
return stored
