-- Record activity: last_activity, record and data TTLs, the expiry index, and the activity
-- key KEDA reads (a one-member set with a TTL) so the pod stays up IDLE_TIMEOUT longer.
-- KEYS: record, expiry_index, activity, then data keys sharing the record's TTL
-- ARGV: id, now_iso, ttl_seconds, expires_at, activity_ttl_seconds
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_activity', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
if tonumber(ARGV[5]) > 0 then
  redis.call('SADD', KEYS[3], '1')
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
return 1
