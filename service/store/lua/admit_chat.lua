-- Admit one chat message: dedupe by message_id, enforce the backlog cap, record it in the
-- conversation, and either take the session's delivery lease to forward it straight to a ready
-- pod (the message waits in the in-flight list meanwhile) or queue it for the worker.
-- An admitted message is work: it joins the session's work set (what every scaler reads; it
-- stays there until the message is settled, so the pod is never scaled away under it), the
-- record's TTLs are refreshed, and the push scaler is told at once (PUBLISH).
-- KEYS: record, queue, inflight, messages, message_ids, pending_index, lease, stats,
--       expiry_index, work, events, bundled_index, restore_index, refresh_hold
-- ARGV: id, message_id, message_json, now_ms, max_queued, max_kept, lease_token, lease_ms,
--       allow_forward, now_iso, ttl_seconds, expires_at, work_channel, budget_bytes,
--       bundle_version (the templates' now), hold_ms, history_max_messages,
--       history_max_bytes (a forwarded message goes to its pod with the conversation:
--       lib/history.lua)
-- The bundle comes first for a session that is not running: an archived one has none (a
-- restore is asked, in the restore index, durably), a sleeping or failed one may run an
-- older version of the templates ('refresh'). Either way the scalers are not told here:
-- the caller tells them once the bundle is applied, so no pod starts from the old one. For
-- 'refresh' the session is also held (refresh_hold, for hold_ms at most: a caller that dies
-- cannot hold it longer): the push scaler answers KEDA's polls "inactive" until the re-apply
-- is done, though the message is in the work set.
-- The conversation also keeps within budget_bytes (0: no budget): the oldest settled
-- messages make room; when only unsettled ones are left, the chat is refused ('budget').
local status = redis.call('HGET', KEYS[1], 'status')
-- A warm pool's session belongs to no user yet: for a chat, it does not exist.
if not status or redis.call('HGET', KEYS[1], 'pooled') == '1' then return {'gone'} end
if status == 'terminating' then return {'terminating'} end
local existing = redis.call('HGET', KEYS[5], ARGV[2])
if existing then
  -- The retry's own message and reply, by its seq: a retry is judged against them.
  return {'duplicate', existing, redis.call('HGET', KEYS[4], existing) or '', status,
          redis.call('HGET', KEYS[4], existing .. ':reply') or ''}
end
local backlog = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3])
if backlog >= tonumber(ARGV[5]) then return {'backlog', tostring(backlog)} end
local budget = tonumber(ARGV[14])
local kept = tonumber(redis.call('HGET', KEYS[1], 'kept_bytes') or '0')
local incoming = #ARGV[3] + 128  -- the stored form adds seq, state and attempts
if budget > 0 and kept + incoming > budget then
  local last = tonumber(redis.call('HGET', KEYS[1], 'msg_seq') or '0')
  kept = trim_settled(KEYS[1], KEYS[4], KEYS[5], kept, budget - incoming, last)
  if kept + incoming > budget then return {'budget', tostring(kept)} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'msg_seq', 1)
local message = cjson.decode(ARGV[3])
message['seq'] = seq
local envelope = cjson.encode({seq = seq, message_id = ARGV[2], session_id = ARGV[1]})
local mode = 'queued'
local now = tonumber(ARGV[4])
if ARGV[9] == '1' and status == 'running' and backlog == 0
    and redis.call('SET', KEYS[7], ARGV[7], 'NX', 'PX', ARGV[8]) then
  mode = 'forward'
  message['state'] = 'delivering'
  message['attempts'] = 1
  redis.call('RPUSH', KEYS[3], envelope)
  -- If this process dies mid-forward, a worker redelivers once the lease has lapsed.
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[8]), ARGV[1])
else
  message['state'] = 'queued'
  message['attempts'] = 0
  redis.call('LPUSH', KEYS[2], envelope)
  redis.call('ZADD', KEYS[6], 'NX', now, ARGV[1])
  redis.call('HINCRBY', KEYS[8], 'queued', 1)
end
local encoded = cjson.encode(message)
redis.call('HSET', KEYS[4], seq, encoded)
redis.call('HSET', KEYS[5], ARGV[2], seq)
local event_id = append_event(KEYS[1], KEYS[11], ARGV[1], 'message',
  {seq = seq, message_id = ARGV[2], state = message['state'], attempts = message['attempts']})
if mode == 'forward' then redis.call('HSET', KEYS[1], 'chunks_from', event_id) end
kept = kept + #encoded
local oldest = seq - tonumber(ARGV[6])
if oldest > 0 then
  local old = redis.call('HGET', KEYS[4], oldest)
  if old then
    kept = kept - redis.call('HSTRLEN', KEYS[4], oldest)
        - redis.call('HSTRLEN', KEYS[4], oldest .. ':reply')
    redis.call('HDEL', KEYS[5], cjson.decode(old)['message_id'])
    redis.call('HDEL', KEYS[4], oldest, oldest .. ':reply')
  end
  if tonumber(redis.call('HGET', KEYS[1], 'kept_from') or '1') <= oldest then
    redis.call('HSET', KEYS[1], 'kept_from', oldest + 1)
  end
end
redis.call('HSET', KEYS[1], 'kept_bytes', math.max(kept, 0))
redis.call('HSET', KEYS[1], 'last_activity', ARGV[10])
for i = 1, 5 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[11]) end
end
redis.call('ZADD', KEYS[9], ARGV[12], ARGV[1])
redis.call('ZADD', KEYS[12], 'XX', tonumber(ARGV[12]) - tonumber(ARGV[11]), ARGV[1])
-- Pending work has no TTL: only an idle session's work set expires.
redis.call('SADD', KEYS[10], 'active', 'm:' .. seq)
redis.call('PERSIST', KEYS[10])
local needs = ''
if status == 'archived' then
  needs = 'restore'
  redis.call('ZADD', KEYS[13], 'NX', now, ARGV[1])
elseif (status == 'sleeping' or status == 'failed')
    and redis.call('HGET', KEYS[1], 'bundle_version') ~= ARGV[15] then
  needs = 'refresh'
  redis.call('SET', KEYS[14], '1', 'PX', ARGV[16])
else
  redis.call('PUBLISH', ARGV[13], ARGV[1])
end
local conversation = ''
if mode == 'forward' then conversation = history(KEYS[1], KEYS[4], seq, ARGV[17], ARGV[18]) end
return {mode, tostring(seq), envelope, redis.call('HGET', KEYS[1], 'paused') or '0', status,
        needs, conversation, redis.call('HGET', KEYS[1], 'user_id') or ''}
