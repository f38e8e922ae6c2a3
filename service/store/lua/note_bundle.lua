-- A bundle was applied for the session: record its version and kinds. An archived session
-- (a restore) becomes `waking` (lib/status.lua: the restore's move) and counts as active from
-- now; an applied session is in the bundled index either way (a re-apply keeps its idle
-- clock), and no longer sweeping.
-- KEYS: record, status_index_prefix, bundled_index, restore_index, events, sweeping_index,
--       failing_index
-- ARGV: id, version, kinds, applied_at (epoch s)
-- Returns the status before, or false when the record is gone.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  return false
end
if status == 'terminating' then return status end
redis.call('HSET', KEYS[1], 'bundle_version', ARGV[2], 'bundle_kinds', ARGV[3],
  'applied_at', ARGV[4])
if status == 'archived' and may_move('restore', status, 'waking') then
  redis.call('HSET', KEYS[1], 'paused', '0', 'observed_status', '', 'observed_reason', '')
  start_wake(KEYS[1], tonumber(ARGV[4]) * 1000, 'restore')
  write_status(KEYS[1], KEYS[2], KEYS[5], KEYS[7], ARGV[1], status, 'waking', '',
    tonumber(ARGV[4]) * 1000, true)
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZADD', KEYS[3], 'NX', ARGV[4], ARGV[1])
end
return status
