-- A worker claims the next message of a session: the in-flight one first (a delivery whose
-- worker died, or one waiting for a retry), else the oldest queued one, moved atomically into
-- the in-flight list. In-flight entries with nothing left to deliver (the conversation entry
-- was trimmed, or a late attempt settled it) are dropped on the way, not left blocking; so is
-- one that has had DELIVERY_MAX_ATTEMPTS claims without an outcome (each process delivering
-- it stopped before it could settle it): it is marked failed here, so nothing is claimed
-- forever.
-- A session that is not running is dropped from the pending index: nothing polls it while it
-- sleeps or wakes; set_status puts it back the moment its pod is ready.
-- KEYS: record, queue, inflight, messages, pending_index, lease, work, events, stats
-- ARGV: id, lease_token, lease_ms, now_ms, activity_ttl_seconds, max_attempts, now_iso,
--       settled_channel, history_max_messages, history_max_bytes
-- Returns {'claimed', envelope, message, history (lib/history.lua), user_id} or {why not}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'gone'}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  return {'not_ready'}
end
if not redis.call('SET', KEYS[6], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'busy'} end
local max_attempts = tonumber(ARGV[6])
while true do
  local envelope = redis.call('LINDEX', KEYS[3], 0)
  if not envelope then envelope = redis.call('RPOPLPUSH', KEYS[2], KEYS[3]) end
  if not envelope then
    redis.call('DEL', KEYS[6])
    redis.call('ZREM', KEYS[5], ARGV[1])
    return {'empty'}
  end
  local seq = cjson.decode(envelope)['seq']
  local stored = redis.call('HGET', KEYS[4], seq)
  local message = stored and cjson.decode(stored)
  local open = message and message['state'] ~= 'delivered' and message['state'] ~= 'failed'
  if open and (message['attempts'] or 0) < max_attempts then
    message['state'] = 'delivering'
    message['attempts'] = (message['attempts'] or 0) + 1
    stored = cjson.encode(message)
    redis.call('HSET', KEYS[4], seq, stored)
    local event_id = append_event(KEYS[1], KEYS[8], ARGV[1], 'message',
      {seq = seq, message_id = message['message_id'], state = 'delivering',
       attempts = message['attempts']})
    redis.call('HSET', KEYS[1], 'chunks_from', event_id)
    -- Not due again before the lease lapses (the worker reschedules when it finishes).
    redis.call('ZADD', KEYS[5], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
    return {'claimed', envelope, stored, history(KEYS[1], KEYS[4], seq, ARGV[9], ARGV[10]),
            redis.call('HGET', KEYS[1], 'user_id') or ''}
  end
  if open then
    message['state'] = 'failed'
    message['error'] = 'no outcome after ' .. message['attempts'] .. ' attempts (each '
      .. 'delivering process stopped before it could record one)'
      .. (message['error'] and ('; last error: ' .. message['error']) or '')
    message['failed_at'] = ARGV[7]
    redis.call('HSET', KEYS[4], seq, cjson.encode(message))
    redis.call('HINCRBY', KEYS[9], 'failed', 1)
    append_event(KEYS[1], KEYS[8], ARGV[1], 'message',
      {seq = seq, message_id = message['message_id'], state = 'failed',
       attempts = message['attempts'], error = message['error']})
    redis.call('PUBLISH', ARGV[8], ARGV[1] .. ':' .. seq)
  end
  redis.call('LREM', KEYS[3], 0, envelope)
  redis.call('SREM', KEYS[7], 'm:' .. seq)
  if redis.call('SCARD', KEYS[7]) <= redis.call('SISMEMBER', KEYS[7], 'active') then
    redis.call('EXPIRE', KEYS[7], ARGV[5])
  end
end
