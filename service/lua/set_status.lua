-- Move a session to a status: record fields and the per-status index in one step.
-- A change of status, reason or replicas goes to the session's event log (`status`).
-- KEYS: record, status_index_prefix (e.g. "sm:st:"), pending_index, queue, inflight, events
-- ARGV: id, new_status, reason ('' clears), now_ms, from_cluster ('1': the watcher speaks),
--       then extra field/value pairs
-- Returns the previous status, or false when the record is gone.
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return false end
local new = ARGV[2]
if old == 'terminating' and new ~= 'terminating' then return old end
-- Archived until a restore applies its bundle again (note_bundle), whoever speaks.
if old == 'archived' and new ~= 'terminating' then return old end
-- An explicitly slept session stays "sleeping" while KEDA is still scaling it down.
if ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'paused') == '1'
    and (new == 'waking' or new == 'running') then
  new = 'sleeping'
end
local order = redis.call('HGET', KEYS[1], 'order')
local shown = {'status', 'reason', 'replicas', 'ready_replicas'}
local before = redis.call('HMGET', KEYS[1], unpack(shown))
if old ~= new then
  redis.call('ZREM', KEYS[2] .. old, ARGV[1])
  redis.call('ZADD', KEYS[2] .. new, order, ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', new, 'reason', ARGV[3])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local after = redis.call('HMGET', KEYS[1], unpack(shown))
for i = 1, #shown do
  if before[i] ~= after[i] then
    append_event(KEYS[1], KEYS[6], ARGV[1], 'status', {
      status = new, reason = ARGV[3], replicas = tonumber(after[3] or '0') or 0,
      ready_replicas = tonumber(after[4] or '0') or 0,
      paused = redis.call('HGET', KEYS[1], 'paused') == '1'})
    break
  end
end
-- A pod just became ready: its waiting messages are due now (nothing polled them before).
if new == 'running' and old ~= 'running'
    and redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
return old
