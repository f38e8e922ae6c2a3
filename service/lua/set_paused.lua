-- Set the record's paused flag, only while the record exists: a late write must not recreate
-- a deleted session as a field-only hash with no TTL.
-- KEYS: record; ARGV: '1' or '0'
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
return 1
