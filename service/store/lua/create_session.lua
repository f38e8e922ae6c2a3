-- Write a new session record and its index entries, then drop its id reservation.
-- KEYS: record, all_index, status_index(created), expiry_index, work, reservation, created_seq,
--       bundled_index
-- ARGV: id, ttl_seconds, activity_ttl_seconds, expires_at, then field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local order = redis.call('INCR', KEYS[7])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'order', order, unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], order, ARGV[1])
redis.call('ZADD', KEYS[3], order, ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[8], tonumber(ARGV[4]) - tonumber(ARGV[2]), ARGV[1])
redis.call('SADD', KEYS[5], 'active')
redis.call('EXPIRE', KEYS[5], ARGV[3])
redis.call('DEL', KEYS[6])
return order
