-- Shared by the scripts that hand a message to its pod (admit_chat's forward, claim_delivery):
-- the session's earlier settled exchanges, oldest first — the pod contract's `history`, a JSON
-- array of {message_id, message, reply, state} — bounded by max_messages and max_bytes (0 for
-- either: no history), the newest kept. Built as text in the same step that hands the message
-- over: each reply goes in as the JSON stored for it, never decoded and re-encoded here.
-- record, messages: keys; before: the message's own sequence number.
local function history(record, messages, before, max_messages, max_bytes)
  max_messages, max_bytes = tonumber(max_messages), tonumber(max_bytes)
  if max_messages <= 0 or max_bytes <= 0 then return '[]' end
  local from = tonumber(redis.call('HGET', record, 'kept_from') or '1')
  local newest_first, size = {}, 2
  local seq = tonumber(before) - 1
  while seq >= from and #newest_first < max_messages do
    local found = redis.call('HMGET', messages, seq, seq .. ':reply')
    if found[1] then
      local message = cjson.decode(found[1])
      local state = message['state']
      if state == 'delivered' or state == 'failed' then
        local entry = '{"message_id":' .. cjson.encode(message['message_id'])
          .. ',"message":' .. cjson.encode(message['message'])
          .. ',"reply":' .. ((state == 'delivered' and found[2]) or 'null')
          .. ',"state":"' .. state .. '"}'
        if size + #entry + 1 > max_bytes then break end
        size = size + #entry + 1
        newest_first[#newest_first + 1] = entry
      end
    end
    seq = seq - 1
  end
  local oldest_first = {}
  for i = #newest_first, 1, -1 do oldest_first[#oldest_first + 1] = newest_first[i] end
  return '[' .. table.concat(oldest_first, ',') .. ']'
end
