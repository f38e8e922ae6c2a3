-- Record activity (lib/activity.lua) on a session that exists.
-- KEYS: record, expiry_index, work, bundled_index, then data keys sharing the record's TTL
-- ARGV: id, now_iso, ttl_seconds, expires_at, activity_ttl_seconds, work_channel
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
record_activity(KEYS[1], KEYS[2], KEYS[3], KEYS[4], {unpack(KEYS, 5)}, ARGV[1], ARGV[2],
  ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
