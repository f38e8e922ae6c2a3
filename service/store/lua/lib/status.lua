-- Shared by the scripts that write a session's status (the loader puts TRANSITIONS in front of
-- them, generated from service/core/transitions.py: who may move a status from what to what,
-- and POOL_READY, the warm pool's index of sessions whose pod is up).
-- Each script reads the status it finds and asks may_move before writing, in the same step:
-- a writer acting on a stale read is refused instead of overwriting a newer truth.
local function may_move(actor, old, new)
  local rules = TRANSITIONS[actor]
  if not rules then return false end
  if old == new then return rules.stays[new] == true end
  local targets = rules.moves[old]
  return targets ~= nil and targets[new] == true
end

-- Write `new` (already allowed) with `reason`: the per-status index, the record, and a
-- `status` event when what a client sees changed (or when `force_event`: the paused flag did).
-- failing: the index of sessions unhealthy since (score ms): joined on `failed`, left once
-- the session is running, asleep or archived (a crash-looping pod between two crashes is
-- `waking`, still unhealthy).
-- record, status_prefix, events, failing: keys; extra: more field/value pairs to set.
local function write_status(record, status_prefix, events, failing, session_id, old, new,
                            reason, now_ms, force_event, extra)
  local shown = {'status', 'reason', 'replicas', 'ready_replicas'}
  local before = redis.call('HMGET', record, unpack(shown))
  -- A pooled session (create_pooled.lua) is in no index of user sessions: the pool's only,
  -- where the ready ones are those whose pod is up.
  local pooled = redis.call('HGET', record, 'pooled') == '1'
  if pooled then
    if new == 'running' then
      redis.call('ZADD', POOL_READY, now_ms, session_id)
    else
      redis.call('ZREM', POOL_READY, session_id)
    end
  elseif old ~= new then
    local order = redis.call('HGET', record, 'order')
    redis.call('ZREM', status_prefix .. old, session_id)
    redis.call('ZADD', status_prefix .. new, order, session_id)
  end
  redis.call('HSET', record, 'status', new, 'reason', reason)
  if extra then
    for i = 1, #extra, 2 do redis.call('HSET', record, extra[i], extra[i + 1]) end
  end
  if new == 'failed' and not pooled then
    redis.call('ZADD', failing, 'NX', now_ms, session_id)
  elseif new == 'running' or new == 'sleeping' or new == 'archived' or new == 'terminating' then
    redis.call('ZREM', failing, session_id)
  end
  local after = redis.call('HMGET', record, unpack(shown))
  local changed = force_event
  for i = 1, #shown do
    if before[i] ~= after[i] then changed = true end
  end
  if changed then
    local data = {status = new, reason = reason, replicas = tonumber(after[3] or '0') or 0,
      ready_replicas = tonumber(after[4] or '0') or 0,
      paused = redis.call('HGET', record, 'paused') == '1'}
    local wake = redis.call('HGET', record, 'wake_phases')
    if wake and wake ~= '' then data['wake'] = cjson.decode(wake) end
    append_event(record, events, session_id, 'status', data)
  end
end
