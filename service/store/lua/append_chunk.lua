-- Relay part of a reply a pod is streaming to the session's event log, only from the attempt
-- that holds the session's delivery lease (a stale attempt's text must not interleave with
-- the current one's) and while the record exists.
-- KEYS: record, lease, events
-- ARGV: id, lease_token, seq, message_id, attempt, text
-- Returns the entry's id, or false when the chunk was not taken.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return false end
return append_event(KEYS[1], KEYS[3], ARGV[1], 'chunk',
  {seq = tonumber(ARGV[3]), message_id = ARGV[4], attempt = tonumber(ARGV[5]),
   text = ARGV[6]}, ARGV[3])
