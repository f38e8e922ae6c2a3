"""Redis memory per session at rest: 10k sessions, INFO memory delta and MEMORY USAGE.

Each round starts from an empty Redis, reads `used_memory`, creates 10k sessions through
`Store.create_session` and reads it again. Sessions have no messages (history is excluded).
MEMORY USAGE then splits the figure into the record hash, the work set and the index
entries (the three sorted sets every session is in: all, status, expiry).
"""

from __future__ import annotations

from service import store as store_module
from service.store import keys as store_keys

from .harness import Context, create_sessions, median
from .report import Figure, Row, Target

SESSIONS = 10_000
SAMPLE = 200


def memory(ctx: Context) -> Figure:
    figure = Figure("memory", "5. Redis memory per session at rest (10k sessions)")
    store = ctx.store()
    redis = store.redis
    totals, at_rest, records, activity, indexes, keys = [], [], [], [], [], []
    for _ in range(ctx.rounds):
        ctx.flush()
        before = int(redis.info("memory")["used_memory"])
        keys_before = int(redis.dbsize())
        ids = create_sessions(store, SESSIONS)
        after = int(redis.info("memory")["used_memory"])
        totals.append((after - before) / SESSIONS)
        keys.append((int(redis.dbsize()) - keys_before) / SESSIONS)
        sample = ids[:: max(1, SESSIONS // SAMPLE)]
        records.append(median(redis.memory_usage(store_keys.record_key(s)) for s in sample))
        activity.append(median(redis.memory_usage(store_module.work_key(s))
                               for s in sample))
        index_keys = [store_keys.ALL_INDEX, store_keys.STATUS_INDEX_PREFIX + "created",
                      store_keys.EXPIRY_INDEX]
        indexes.append(sum(redis.memory_usage(k, samples=0) for k in index_keys) / SESSIONS)
        # At rest: the work sets have expired (IDLE_TIMEOUT - cooldown after the last
        # activity, nothing pending). Delete them, as their expiry would, and measure again.
        pipe = redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.delete(store_module.work_key(session_id))
        pipe.execute()
        rested = int(redis.info("memory")["used_memory"])
        at_rest.append((rested - before) / SESSIONS)
    ctx.flush()
    figure.rows = [
        Row("at rest: used_memory delta per session", "B", at_rest,
            target=Target("<=", 1024, "B")),
        Row("just created (work set alive)", "B", totals),
        Row("  record hash (MEMORY USAGE)", "B", records),
        Row("  index entries: all + status + expiry", "B", indexes),
        Row("  work set (MEMORY USAGE)", "B", activity),
        Row("keys per session, just created", "", keys),
    ]
    figure.notes = [
        f"{ctx.rounds} rounds, each from an empty Redis: used_memory after {SESSIONS:,} "
        "creates minus before, divided by the count (includes dict/expire-table overhead).",
        "MEMORY USAGE rows: the median of a 200-session sample (record, work set); the "
        "index rows are the three sorted sets' full MEMORY USAGE (SAMPLES 0) / sessions. "
        "The sorted-set entries are counters too (ZCARD is what /metrics reads).",
        "At rest = after the work sets (what the scalers read; with nothing pending they expire "
        "IDLE_TIMEOUT - cooldown after the last activity) are gone; the target is judged "
        "there. 'Just created' is the same sessions while the keys still exist.",
        "used_memory includes the keyspace and expires dict tables, which grow in powers of "
        "two: a delta per session moves by a few tens of bytes with the count.",
    ]
    return figure
