-- Shared by the scripts (the loader puts it in front of each): keep a conversation within
-- its byte budget by dropping its oldest *settled* messages (delivered or failed, with their
-- replies and dedupe entries). A message still queued or in flight is never dropped: trimming
-- stops at the first one. The record keeps `kept_bytes` and `kept_from` (the oldest sequence
-- number that may still be kept).
-- record, messages, message_ids: keys; kept: bytes now; target: bytes to get down to;
-- last: the newest sequence number that may be dropped. Returns the bytes kept after.
local function trim_settled(record, messages, message_ids, kept, target, last)
  local from = tonumber(redis.call('HGET', record, 'kept_from') or '1')
  while kept > target and from <= last do
    local stored = redis.call('HGET', messages, from)
    if stored then
      local old = cjson.decode(stored)
      if old['state'] ~= 'delivered' and old['state'] ~= 'failed' then break end
      kept = kept - redis.call('HSTRLEN', messages, from)
          - redis.call('HSTRLEN', messages, from .. ':reply')
      redis.call('HDEL', message_ids, old['message_id'])
      redis.call('HDEL', messages, from, from .. ':reply')
    end
    from = from + 1
  end
  redis.call('HSET', record, 'kept_from', from, 'kept_bytes', math.max(kept, 0))
  return math.max(kept, 0)
end
