-- A session unhealthy (failed, or between two crashes of a crash-looping pod) since before
-- `cutoff` gives up its pending work: every queued message, and every in-flight one no
-- delivery holds now, is marked failed with the session's reason, visible in /messages and
-- /events. Its work set lets the pod go (KEDA scales it to 0 once the recent activity lapses),
-- so archiving and expiry can proceed. A message admitted later waits as usual and is
-- delivered if the session recovers (or failed by a later pass if it does not).
-- KEYS: record, queue, inflight, messages, pending_index, lease, work, events, stats,
--       failing_index
-- ARGV: id, cutoff_ms, now_iso, activity_ttl_seconds, settled_channel, grace_seconds
-- Returns how many messages were failed.
local since = redis.call('ZSCORE', KEYS[10], ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not since or (status ~= 'failed' and status ~= 'waking') then
  redis.call('ZREM', KEYS[10], ARGV[1])
  return 0
end
if tonumber(since) > tonumber(ARGV[2]) then return 0 end
-- Nothing pending: nothing to do (a later pass must not touch the work set's idle clock).
if redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) == 0 then return 0 end
local reason = redis.call('HGET', KEYS[1], 'reason') or ''
if reason == '' then reason = 'the pod did not start' end
local error = 'the session failed (' .. reason .. ') and did not recover within '
  .. ARGV[6] .. ' s'
local failed = 0
local envelopes = {}
for _, envelope in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  envelopes[#envelopes + 1] = {KEYS[2], envelope}
end
if redis.call('EXISTS', KEYS[6]) == 0 then
  for _, envelope in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    envelopes[#envelopes + 1] = {KEYS[3], envelope}
  end
end
for _, item in ipairs(envelopes) do
  local seq = cjson.decode(item[2])['seq']
  local stored = redis.call('HGET', KEYS[4], seq)
  local message = stored and cjson.decode(stored)
  if message and message['state'] ~= 'delivered' and message['state'] ~= 'failed' then
    message['state'] = 'failed'
    message['error'] = error
    message['failed_at'] = ARGV[3]
    redis.call('HSET', KEYS[4], seq, cjson.encode(message))
    redis.call('HINCRBY', KEYS[9], 'failed', 1)
    append_event(KEYS[1], KEYS[8], ARGV[1], 'message',
      {seq = seq, message_id = message['message_id'], state = 'failed',
       attempts = message['attempts'], error = error})
    redis.call('PUBLISH', ARGV[5], ARGV[1] .. ':' .. seq)
    failed = failed + 1
  end
  redis.call('LREM', item[1], 0, item[2])
  redis.call('SREM', KEYS[7], 'm:' .. seq)
end
if redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[5], ARGV[1])
end
if redis.call('SCARD', KEYS[7]) <= redis.call('SISMEMBER', KEYS[7], 'active') then
  redis.call('EXPIRE', KEYS[7], ARGV[4])
end
return failed
