-- A create takes a warm session from the pool, in one step: the oldest one whose pod is up
-- (status running) on the templates' current version becomes the user's — user_id, token,
-- created_at, a fresh place in the indexes of user sessions, its own idle clock — and leaves
-- the pool. Two creates can never get the same one. Counted as a claim, or a miss when none
-- is ready (the create then makes a session the usual way).
-- KEYS: pool_ready, pool_index, all_index, status_index_prefix, expiry_index, bundled_index,
--       created_seq, stats
-- ARGV: record_prefix, work_prefix, events_prefix, user_id, token_hash, now_iso, ttl_seconds,
--       expires_at, activity_ttl_seconds, bundle_version, now_ms
-- Returns {id, created_at, replicas, ready_replicas} or false.
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, 19)) do
  local record = ARGV[1] .. id
  local found = redis.call('HMGET', record, 'pooled', 'status', 'bundle_version')
  if found[1] == '1' and found[2] == 'running' and found[3] == ARGV[10] then
    local order = redis.call('INCR', KEYS[7])
    redis.call('HSET', record, 'pooled', '0', 'order', order, 'user_id', ARGV[4],
      'token', ARGV[5], 'created_at', ARGV[6], 'last_activity', ARGV[6])
    redis.call('EXPIRE', record, ARGV[7])
    redis.call('ZADD', KEYS[3], order, id)
    redis.call('ZADD', KEYS[4] .. 'running', order, id)
    redis.call('ZADD', KEYS[5], ARGV[8], id)
    redis.call('ZADD', KEYS[6], tonumber(ARGV[8]) - tonumber(ARGV[7]), id)
    local work = ARGV[2] .. id
    redis.call('SREM', work, 'pool')
    redis.call('SADD', work, 'active')
    redis.call('EXPIRE', work, ARGV[9])
    -- Its log starts with its owner: what the pool saw of it is not the user's.
    redis.call('DEL', ARGV[3] .. id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    -- Its pod is up: every phase of the start-up is behind it (0 s), the first reply to come.
    start_wake(record, ARGV[11], 'pool')
    note_wake(record, {scaled = true, scheduled = true, image = true, started = true,
                       ready = true}, ARGV[11])
    redis.call('HINCRBY', KEYS[8], 'pool_claims', 1)
    local shown = redis.call('HMGET', record, 'replicas', 'ready_replicas')
    return {id, ARGV[6], shown[1] or '0', shown[2] or '0'}
  end
end
redis.call('HINCRBY', KEYS[8], 'pool_misses', 1)
return false
