-- Archive an idle session: its record and conversation stay, its bundle is about to be swept.
-- Only when the archiver may move it from its status now (lib/status.lua), it is still idle
-- since `cutoff`, has no queued or in-flight message, no restore asked, and the bundle lock is
-- free: the lock is taken here, in the same step, and held by the archiver while it deletes
-- the objects. The session is in the sweeping index from now until its objects are gone (a
-- restore waits for that; a crash before the deletes is caught by the archiver's next pass).
-- KEYS: record, status_index_prefix, bundled_index, restore_index, queue, inflight, events,
--       bundle_lock, sweeping_index, failing_index
-- ARGV: id, cutoff (epoch s), lock_token, lock_ms, now_iso, now (epoch ms)
-- Returns 'archived', or why not: gone|terminating|archived|active|busy|locked
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 'gone'
end
if not may_move('archiver', status, 'archived') or status == 'archived' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return status
end
local idle_since = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not idle_since or tonumber(idle_since) > tonumber(ARGV[2]) then return 'active' end
if redis.call('LLEN', KEYS[5]) + redis.call('LLEN', KEYS[6]) > 0
    or redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  return 'busy'
end
if not redis.call('SET', KEYS[8], ARGV[3], 'NX', 'PX', ARGV[4]) then return 'locked' end
-- Nothing of the bundle's life outlives it: no pause (a restored bundle carries none), no pod.
redis.call('HSET', KEYS[1], 'replicas', '0', 'ready_replicas', '0', 'pod_ip', '', 'paused', '0',
  'observed_status', '', 'observed_reason', '', 'archived_at', ARGV[5])
write_status(KEYS[1], KEYS[2], KEYS[7], KEYS[10], ARGV[1], status, 'archived', '', ARGV[6], true)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[6], ARGV[1])
return 'archived'
