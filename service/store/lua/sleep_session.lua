-- An explicit sleep, once KEDA's pause annotation is written (the annotation first: a crash
-- between the two writes leaves a flag the reconciler repairs from the annotation): the
-- paused flag, the move to `sleeping` and the end of recent activity (pending messages stay
-- work, kept for the next wake) in one step — only while the API may put the session to sleep
-- (lib/status.lua). An archived session (the archiver swept it meanwhile) or a terminating one
-- is left as it is, paused flag included.
-- KEYS: record, status_index_prefix, events, work, failing_index
-- ARGV: id, now_ms
-- Returns the status before (the sleep applies when that is not archived/terminating), or
-- false when the record is gone.
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return false end
if not may_move('api', old, 'sleeping') then return old end
redis.call('HSET', KEYS[1], 'paused', '1')
write_status(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], old, 'sleeping', '', ARGV[2], true)
redis.call('SREM', KEYS[4], 'active')
return old
