-- Count an /events stream in against the session's limit, shared by every API replica: a
-- sorted set of stream tokens scored by when each lapses (a replica that died without closing
-- its streams frees their places once they lapse; open streams renew at each heartbeat).
-- KEYS: record, streams
-- ARGV: token, now_ms, lapses_at_ms, limit
-- Returns 1 (opened), 0 (the session has `limit` open streams), -1 (no such session).
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'pooled') == '1' then
  return -1  -- no session, or a warm pool's (no user's yet)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false
    and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
