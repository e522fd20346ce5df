-- epoch: read the server's epoch, writing it first if it is missing (as a submit would), with
-- the server's clock: every writer and reader of the epoch uses that one clock.
-- KEYS: epoch
-- ARGV: (none)
-- Returns {epoch in microseconds, the server's time now in microseconds}.
ensure_epoch(KEYS[1])
local now = redis.call('TIME')
return {redis.call('GET', KEYS[1]), now[1] .. string.format('%06d', tonumber(now[2]))}
