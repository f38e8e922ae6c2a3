-- Give up a named lease, only if the caller still holds it (it may have lapsed and been taken).
-- KEYS: lease; ARGV: holder
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
