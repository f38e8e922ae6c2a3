-- Shared by the scripts that see a session wake: the phases of its current wake (since a
-- create, a wake or a restore asked for it), each recorded once, in seconds since the ask, as
-- the status watch sees them reached — scaled (the Deployment wants a pod), scheduled, image
-- (the container's image is there), started, ready — and first_byte, the first byte of a
-- reply from the pod (within WAKE_FIRST_BYTE_WINDOW_MS of the ask). The record keeps them as
-- `wake_phases` (JSON); each is also counted in WAKE_HISTOGRAM, the buckets /metrics serves.
local WAKE_PHASES = {'scaled', 'scheduled', 'image', 'started', 'ready', 'first_byte'}
local WAKE_BUCKETS_MS = {100, 250, 500, 1000, 2000, 4000, 8000, 15000, 30000, 60000}

-- A new wake of the session, asked at now_ms (kind: create, wake, restore, pool).
local function start_wake(record, now_ms, kind)
  redis.call('HSET', record, 'wake_phases',
    cjson.encode({at = tonumber(now_ms), kind = kind}))
end

-- Record the phases in `reached` (phase -> true) the current wake has not recorded yet, as of
-- now_ms. Returns true when one was recorded.
local function note_wake(record, reached, now_ms)
  local raw = redis.call('HGET', record, 'wake_phases')
  if not raw or raw == '' then return false end
  local wake = cjson.decode(raw)
  local elapsed = math.max(0, tonumber(now_ms) - tonumber(wake['at']))
  local changed = false
  for _, phase in ipairs(WAKE_PHASES) do
    if reached[phase] and wake[phase] == nil
        and (phase ~= 'first_byte' or elapsed <= WAKE_FIRST_BYTE_WINDOW_MS) then
      wake[phase] = elapsed / 1000
      changed = true
      redis.call('HINCRBY', WAKE_HISTOGRAM, phase .. ':count', 1)
      redis.call('HINCRBY', WAKE_HISTOGRAM, phase .. ':sum_ms', elapsed)
      for _, bound in ipairs(WAKE_BUCKETS_MS) do
        if elapsed <= bound then redis.call('HINCRBY', WAKE_HISTOGRAM, phase .. ':' .. bound, 1) end
      end
    end
  end
  if changed then redis.call('HSET', record, 'wake_phases', cjson.encode(wake)) end
  return changed
end
