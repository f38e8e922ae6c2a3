-- Remove members of a sorted set whose score is still the one the caller read (anything
-- added again since, with a new score, stays).
-- KEYS: sorted set
-- ARGV: member, score, member, score, ...
-- Returns how many were removed.
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
