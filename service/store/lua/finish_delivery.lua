-- End a delivery attempt. On success store the reply (once: a redelivery's reply does not
-- overwrite it); on failure either keep the message in flight for a retry at retry_at_ms or,
-- after max_attempts, mark it failed. Releases the lease and reschedules the session.
-- A late finisher (its lease lapsed and the message was claimed again or settled meanwhile)
-- may still record a reply, but a failure of its must not undo a newer outcome.
-- A settled message leaves the work set; when no work is left the set expires activity_ttl
-- after this (the session's idle clock). A delivered reply is activity: TTLs are refreshed.
-- A stored reply counts against the conversation's byte budget (older settled messages
-- make room; the reply itself is always kept).
-- The outcome goes to the session's event log: the final reply (`reply`), a failure or a
-- retry (`message`); the attempt's chunks are dropped from it (the outcome supersedes them).
-- KEYS: record, queue, inflight, messages, pending_index, lease, stats, expiry_index, work,
--       message_ids, events, bundled_index
-- ARGV: id, envelope, lease_token, outcome ('delivered'|'failed'), reply_json_or_error,
--       now_iso, now_ms, max_attempts, retry_at_ms, ttl_seconds, expires_at,
--       activity_ttl_seconds, extra_counter ('' or a stats field to count a delivery under),
--       budget_bytes (0: none), not_sent ('1': the request never reached the pod),
--       settled_channel (told '<id>:<seq>' once the message is delivered or failed),
--       warning ('' or what was wrong with the reply and was mended, kept with the message),
--       first_byte_ms (when the pod's answer began: the wake's first_byte phase, 0: unknown)
local seq = cjson.decode(ARGV[2])['seq']
local stored = redis.call('HGET', KEYS[4], seq)
local retry_at = tonumber(ARGV[7])
local holder = redis.call('GET', KEYS[6])
local event_kind, event
if stored then
  local message = cjson.decode(stored)
  local settled = message['state'] == 'delivered' or message['state'] == 'failed'
  if ARGV[4] == 'delivered' then
    if message['state'] ~= 'delivered' then
      message['state'] = 'delivered'
      message['delivered_at'] = ARGV[6]
      message['error'] = nil
      if ARGV[17] ~= '' then message['warning'] = ARGV[17] end
      redis.call('HSET', KEYS[4], seq .. ':reply', ARGV[5])
      redis.call('HINCRBY', KEYS[7], 'delivered', 1)
      redis.call('HSET', KEYS[4], seq, cjson.encode(message))
      event_kind = 'reply'
      event = {seq = seq, message_id = message['message_id'], state = 'delivered'}
      if redis.call('EXISTS', KEYS[1]) == 1 then
        local kept = tonumber(redis.call('HGET', KEYS[1], 'kept_bytes') or '0') + #ARGV[5]
        local budget = tonumber(ARGV[14])
        if budget > 0 and kept > budget then
          trim_settled(KEYS[1], KEYS[4], KEYS[10], kept, budget, seq - 1)
        else
          redis.call('HSET', KEYS[1], 'kept_bytes', kept)
        end
      end
    end
    redis.call('LREM', KEYS[3], 0, ARGV[2])
  elseif settled then
    -- Another attempt already settled it: this failure is stale and changes nothing.
    redis.call('LREM', KEYS[3], 0, ARGV[2])
  elseif holder and holder ~= ARGV[3] then
    -- This attempt's lease lapsed and another worker holds the message now: its outcome
    -- decides (and it reschedules the session), not this stale failure.
    return stored
  else
    -- Never sent (the pod's connection refused, as right after a wake): the attempt is given
    -- back, a bounded number of times so a pod that never accepts still ends failed.
    if ARGV[15] == '1' and (message['refunds'] or 0) < 20 then
      message['attempts'] = math.max((message['attempts'] or 1) - 1, 0)
      message['refunds'] = (message['refunds'] or 0) + 1
    end
    if (message['attempts'] or 0) >= tonumber(ARGV[8]) then
      message['state'] = 'failed'
      message['error'] = ARGV[5]
      message['failed_at'] = ARGV[6]
      redis.call('LREM', KEYS[3], 0, ARGV[2])
      redis.call('HINCRBY', KEYS[7], 'failed', 1)
      redis.call('HSET', KEYS[4], seq, cjson.encode(message))
    else
      message['state'] = 'queued'
      message['error'] = ARGV[5]
      retry_at = tonumber(ARGV[9])
      redis.call('HSET', KEYS[4], seq, cjson.encode(message))
    end
    event_kind = 'message'
    event = {seq = seq, message_id = message['message_id'], state = message['state'],
             attempts = message['attempts'], error = message['error']}
  end
else
  redis.call('LREM', KEYS[3], 0, ARGV[2])
end
if stored then
  drop_chunks(KEYS[11], redis.call('HGET', KEYS[1], 'chunks_from'), seq)
end
if event_kind then append_event(KEYS[1], KEYS[11], ARGV[1], event_kind, event) end
if holder == ARGV[3] then redis.call('DEL', KEYS[6]) end
if redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[3]) > 0
    and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[5], retry_at, ARGV[1])
else
  redis.call('ZREM', KEYS[5], ARGV[1])
end
if ARGV[4] == 'delivered' and redis.call('EXISTS', KEYS[1]) == 1 then
  if tonumber(ARGV[18]) > 0 then note_wake(KEYS[1], {first_byte = true}, ARGV[18]) end
  redis.call('HSET', KEYS[1], 'last_activity', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  redis.call('EXPIRE', KEYS[4], ARGV[10])
  redis.call('ZADD', KEYS[8], ARGV[11], ARGV[1])
  redis.call('ZADD', KEYS[12], 'XX', tonumber(ARGV[11]) - tonumber(ARGV[10]), ARGV[1])
  if ARGV[13] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[13], 1) end
end
local message = redis.call('HGET', KEYS[4], seq)
local state = message and cjson.decode(message)['state']
if not message or state == 'delivered' or state == 'failed' then
  redis.call('SREM', KEYS[9], 'm:' .. seq)
  redis.call('PUBLISH', ARGV[16], ARGV[1] .. ':' .. seq)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[4] == 'delivered' then redis.call('SADD', KEYS[9], 'active') end
  if redis.call('SCARD', KEYS[9]) <= redis.call('SISMEMBER', KEYS[9], 'active') then
    redis.call('EXPIRE', KEYS[9], ARGV[12])
  end
end
return message or ''
