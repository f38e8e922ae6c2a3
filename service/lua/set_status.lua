-- Move a session to a status: record fields and the per-status index in one step.
-- KEYS: record, status_index_prefix (e.g. "sm:st:")
-- ARGV: id, new_status, reason ('' clears), then extra field/value pairs
-- Returns the previous status, or false when the record is gone.
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return false end
if old == 'terminating' and ARGV[2] ~= 'terminating' then return old end
local order = redis.call('HGET', KEYS[1], 'order')
if old ~= ARGV[2] then
  redis.call('ZREM', KEYS[2] .. old, ARGV[1])
  redis.call('ZADD', KEYS[2] .. ARGV[2], order, ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'reason', ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return old
