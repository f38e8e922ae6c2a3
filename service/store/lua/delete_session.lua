-- Remove every key and index entry of a session. Returns 1 when a record existed.
-- KEYS: record, all_index, expiry_index, pending_index, status_index_prefix, bundled_index,
--       restore_index, sweeping_index, failing_index, then data keys
-- ARGV: id, then every status name
local existed = redis.call('EXISTS', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
for i = 2, #ARGV do redis.call('ZREM', KEYS[5] .. ARGV[i], ARGV[1]) end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
redis.call('ZREM', POOL_INDEX, ARGV[1])
redis.call('ZREM', POOL_READY, ARGV[1])
redis.call('DEL', KEYS[1])
for i = 10, #KEYS do redis.call('DEL', KEYS[i]) end
-- Open /events streams of the session end now, on every replica.
redis.call('PUBLISH', EVENTS_CHANNEL, ARGV[1])
return existed
