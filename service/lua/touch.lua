-- Record activity: last_activity, record and data TTLs, the expiry index, and 'active' in the
-- work set the scalers read, so the pod stays up IDLE_TIMEOUT longer (pending messages keep
-- the set without a TTL). The push scaler is told at once.
-- KEYS: record, expiry_index, work, bundled_index, then data keys sharing the record's TTL
-- ARGV: id, now_iso, ttl_seconds, expires_at, activity_ttl_seconds, work_channel
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_activity', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], 'XX', tonumber(ARGV[4]) - tonumber(ARGV[3]), ARGV[1])
redis.call('SADD', KEYS[3], 'active')
if redis.call('SCARD', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
redis.call('PUBLISH', ARGV[6], ARGV[1])
for i = 5, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
return 1
