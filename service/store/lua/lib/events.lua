-- Shared by the scripts (the loader puts it in front of each, after a line setting
-- EVENTS_KEPT and EVENTS_CHANNEL): append one event to the session's event log, the stream
-- /events serves and resumes from. The log lives as long as the record (its TTL), keeps about
-- EVENTS_KEPT entries (when it trims, the record's `events_trimmed_before` says from where it
-- is whole), and every API replica is told the session's log grew.
-- record, events: keys; kind: the event type; data: a table (JSON-encoded into the entry);
-- seq: for a chunk, its message's sequence number (so the chunks of an attempt can be dropped
-- once it is over: the final reply, or a retry, supersedes them). Returns the entry's id, or
-- false when the record is gone.
local function append_event(record, events, session_id, kind, data, seq)
  -- A write racing a delete must not leave a log behind with no record (and no TTL).
  if redis.call('EXISTS', record) == 0 then return false end
  local id
  if seq then
    id = redis.call('XADD', events, '*', 't', kind, 'd', cjson.encode(data), 's', seq)
  else
    id = redis.call('XADD', events, '*', 't', kind, 'd', cjson.encode(data))
  end
  if redis.call('XLEN', events) > EVENTS_KEPT + math.ceil(EVENTS_KEPT / 10) then
    redis.call('XTRIM', events, 'MAXLEN', EVENTS_KEPT)
    local first = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
    redis.call('HSET', record, 'events_trimmed_before', first[1][1])
  end
  local ttl = redis.call('PTTL', record)
  if ttl > 0 then redis.call('PEXPIRE', events, ttl) end
  redis.call('PUBLISH', EVENTS_CHANNEL, session_id)
  return id
end

-- Drop the chunk entries of message `seq` written since `from_id` (the attempt's start):
-- they are superseded by its final reply or its retry; the log keeps only what a late
-- reader still needs.
local function drop_chunks(events, from_id, seq)
  if not from_id or from_id == '' then return end
  local entries = redis.call('XRANGE', events, from_id, '+')
  local doomed = {}
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    if fields[2] == 'chunk' and fields[6] == tostring(seq) then
      doomed[#doomed + 1] = entry[1]
    end
  end
  for i = 1, #doomed, 500 do
    redis.call('XDEL', events, unpack(doomed, i, math.min(i + 499, #doomed)))
  end
end
