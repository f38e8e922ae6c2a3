-- Move a session to a status, if the transition table lets `actor` make that move from the
-- status the record has now (lib/status.lua): record fields, the per-status index and the
-- event log in one step.
-- KEYS: record, status_index_prefix (e.g. "sm:st:"), pending_index, queue, inflight, events,
--       failing_index
-- ARGV: id, new_status, reason ('' clears), now_ms, actor, wake phases the cluster shows
--       reached (comma-separated, lib/wake.lua; the watch's), then extra field/value pairs
-- Returns {status before, 1 if written else 0}, or false when the record is gone.
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return false end
local new = ARGV[2]
local actor = ARGV[5]
-- An explicitly slept session stays "sleeping" while KEDA is still scaling it down, whatever
-- the pod that is going away says (ready, starting, or failing).
-- What the watch derived is kept as it was (observed_status/_reason): a wake lifting the pause
-- shows it again (resume_session.lua), as the watch may not repeat itself.
local reason = ARGV[3]
if actor == 'watch' then
  redis.call('HSET', KEYS[1], 'observed_status', new, 'observed_reason', reason)
  if redis.call('HGET', KEYS[1], 'paused') == '1' and new ~= 'sleeping' then
    new, reason = 'sleeping', ''
  end
end
if not may_move(actor, old, new) then return {old, 0} end
local reached = {}
for phase in string.gmatch(ARGV[6], '[^,]+') do reached[phase] = true end
local progressed = note_wake(KEYS[1], reached, ARGV[4])
write_status(KEYS[1], KEYS[2], KEYS[6], KEYS[7], ARGV[1], old, new, reason, ARGV[4],
  progressed, {unpack(ARGV, 7)})
-- A pod just became ready: its waiting messages are due now (nothing polled them before).
if new == 'running' and old ~= 'running'
    and redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
return {old, 1}
