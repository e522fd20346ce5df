-- submit: write the submit marker and queue the message, in one step.
-- KEYS: marker, epoch (result db); queue, wake (broker db)
-- ARGV: task_name, queue, submitted_at, marker_ttl, broker_db, message
-- Sent again (a confirmed write whose replicas were slow), it finds its marker and queues
-- nothing twice. Returns 1 when it queued the message, 0 when the marker was there.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
ensure_epoch(KEYS[2])
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'queue', ARGV[2], 't', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SELECT', ARGV[5])
redis.call('LPUSH', KEYS[3], ARGV[6])
redis.call('LPUSH', KEYS[4], '1')
return 1
