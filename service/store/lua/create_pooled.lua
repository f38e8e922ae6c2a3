-- Write the record of a session created ahead of its user, for the warm pool: its bundle is
-- applied, it belongs to no one yet. It is in none of the indexes a user session is in (the
-- session list, the counts, expiry, archiving): only in the pool's, until a create claims it
-- (claim_pooled.lua). Its work set holds 'pool' with no TTL, so the scalers keep its pod up.
-- KEYS: record, pool_index, work, reservation, created_seq
-- ARGV: id, record_ttl_seconds, now_ms, then field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local order = redis.call('INCR', KEYS[5])
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'order', order, 'pooled', '1', unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], 'pool')
redis.call('PERSIST', KEYS[3])
redis.call('DEL', KEYS[4])
return order
