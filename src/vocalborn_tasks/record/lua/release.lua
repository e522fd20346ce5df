-- release: delete a lock or claim only if it still holds the caller's token.
-- KEYS: lock
-- ARGV: token
-- Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
