-- The reconciler found the record's paused flag disagreeing with KEDA's pause annotation (a
-- crash or a Redis error between a sleep's or a wake's two writes; the annotation is always
-- written first, so it is the truth): the flag is set back to it. A flag turned on completes
-- the sleep (the session is `sleeping`, if the API may put it to sleep); a flag turned off
-- changes no status (KEDA decides from the work set, and the watch reports what it does).
-- KEYS: record, status_index_prefix, events, failing_index
-- ARGV: id, now_ms, paused ('1'|'0')
-- Returns 1 when the flag was changed.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'archived' or status == 'terminating' then return 0 end
if (redis.call('HGET', KEYS[1], 'paused') == '1') == (ARGV[3] == '1') then return 0 end
redis.call('HSET', KEYS[1], 'paused', ARGV[3])
local new = status
if ARGV[3] == '1' and may_move('api', status, 'sleeping') then new = 'sleeping' end
write_status(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], status, new,
  new == status and (redis.call('HGET', KEYS[1], 'reason') or '') or '', ARGV[2], true)
return 1
