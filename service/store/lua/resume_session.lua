-- A wake (or a chat's wake), once KEDA's pause annotation is removed: the paused flag off and,
-- with touch, the activity that tells the scalers, in one step. A sleeping (or just created)
-- session becomes `waking` — unless the sleep only masked what the watch saw (a pod still up,
-- or failing, when the pause was lifted before KEDA acted: the watch will not say it again),
-- which is shown again as the watch's own word. What the watch derived is never overwritten
-- (a session it saw `running` meanwhile stays running: lib/status.lua). An archived session
-- (the archiver may have swept it since the caller read it) gets its restore asked here, in the
-- same step, so a wake is never lost to an archive; the caller then restores it.
-- KEYS: record, status_index_prefix, events, failing_index, restore_index, expiry_index,
--       work, bundled_index, pending_index, queue, inflight, then data keys sharing the
--       record's TTL
-- ARGV: id, now_ms, touch ('1'|'0'), now_iso, ttl_seconds, expires_at, activity_ttl_seconds,
--       work_channel
-- Returns {'gone'} | {'terminating'} | {'restore'} | {'resumed', status, ready_replicas}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'gone'} end
if status == 'terminating' then return {'terminating'} end
if ARGV[3] == '1' then
  record_activity(KEYS[1], KEYS[6], KEYS[7], KEYS[8], {unpack(KEYS, 12)}, ARGV[1], ARGV[4],
    ARGV[5], ARGV[6], ARGV[7], ARGV[8])
end
if status == 'archived' then
  redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[1])
  return {'restore'}
end
local paused = redis.call('HGET', KEYS[1], 'paused') == '1'
redis.call('HSET', KEYS[1], 'paused', '0')
-- A session not up yet starts a wake: its phases are measured from now (lib/wake.lua).
if status ~= 'running' then start_wake(KEYS[1], ARGV[2], 'wake') end
local observed = paused and redis.call('HGET', KEYS[1], 'observed_status') or nil
if (observed == 'running' or observed == 'failed' or observed == 'waking')
    and observed ~= status and may_move('watch', status, observed) then
  write_status(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], status, observed,
    redis.call('HGET', KEYS[1], 'observed_reason') or '', ARGV[2], true)
  status = observed
  -- A pod that is up: its waiting messages are due now.
  if status == 'running' and redis.call('LLEN', KEYS[10]) + redis.call('LLEN', KEYS[11]) > 0 then
    redis.call('ZADD', KEYS[9], ARGV[2], ARGV[1])
  end
elseif may_move('api', status, 'waking') then
  write_status(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], status, 'waking', '', ARGV[2],
    paused)
  status = 'waking'
elseif paused then
  write_status(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], status, status,
    redis.call('HGET', KEYS[1], 'reason') or '', ARGV[2], true)
end
if ARGV[3] ~= '1' then redis.call('PUBLISH', ARGV[8], ARGV[1]) end
return {'resumed', status, redis.call('HGET', KEYS[1], 'ready_replicas') or '0'}
