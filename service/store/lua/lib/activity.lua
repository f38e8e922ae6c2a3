-- Shared by the scripts that record activity (a wake, a chat, a reply): last_activity, the
-- record's and its data keys' TTLs, the expiry index, the idle clock of the bundled index,
-- and 'active' in the work set the scalers read, so the pod stays up IDLE_TIMEOUT longer
-- (pending messages keep the set without a TTL). The push scaler is told at once.
-- record, expiry, work, bundled: keys; data_keys: the keys sharing the record's TTL.
local function record_activity(record, expiry, work, bundled, data_keys, session_id, now_iso,
                               ttl, expires_at, activity_ttl, work_channel)
  redis.call('HSET', record, 'last_activity', now_iso)
  redis.call('EXPIRE', record, ttl)
  redis.call('ZADD', expiry, expires_at, session_id)
  redis.call('ZADD', bundled, 'XX', tonumber(expires_at) - tonumber(ttl), session_id)
  redis.call('SADD', work, 'active')
  if redis.call('SCARD', work) == 1 then redis.call('EXPIRE', work, activity_ttl) end
  redis.call('PUBLISH', work_channel, session_id)
  for _, key in ipairs(data_keys) do
    if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ttl) end
  end
end
