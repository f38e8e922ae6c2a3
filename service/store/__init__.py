"""Redis: the only package that imports the Redis client and knows key names (`keys`).

Session records are hashes with a TTL refreshed on activity; indexes are sorted sets scored by
a creation counter (so `/sessions` pages by cursor and `/metrics` reads ZCARDs: never a
keyspace scan); every multi-key change is one Lua script (`lua/`), the status ones checking
the transition table. `Store` holds one part per concern over one connection.
"""

from service.store.client import Database, Store
from service.store.event_log import Event, is_event_id
from service.store.failures import UNAVAILABLE, unavailable
from service.store.keys import (
    EVENTS_CHANNEL,
    SETTLED_CHANNEL,
    WORK_CHANNEL,
    keda_keys,
    work_key,
)

__all__ = [
    "EVENTS_CHANNEL",
    "SETTLED_CHANNEL",
    "UNAVAILABLE",
    "WORK_CHANNEL",
    "Database",
    "Event",
    "Store",
    "is_event_id",
    "keda_keys",
    "unavailable",
    "work_key",
]
