-- progress: store a PROGRESS meta unless the task already has a final state (a running task
-- must not overwrite its own cancellation).
-- KEYS: meta
-- ARGV: progress_meta, meta_ttl
-- Returns 1 if stored, 0 if the task is final (the caller stops: it was cancelled).
if is_final(KEYS[1]) then return 0 end
put_meta(KEYS[1], ARGV[1], ARGV[2])
return 1
