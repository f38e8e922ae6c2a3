"""Which Redis errors mean "unavailable" (503), and the error the service raises for them."""

from __future__ import annotations

import redis

from service.core.errors import RedisOutOfMemory, RedisReadOnly, RedisUnavailable

# Errors that mean "Redis cannot take this now" (503): unreachable, or refusing writes at
# maxmemory or as a read-only replica. Any other RedisError is a bug (500). A script refused
# for memory wrote nothing: Redis decides at its start, and refuses its first write.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError,
               redis.exceptions.ReadOnlyError)


def unavailable(err: Exception) -> RedisUnavailable:
    """The 503 for one of UNAVAILABLE. The client's message can carry the URL: only the
    error's type is kept."""
    if isinstance(err, redis.exceptions.OutOfMemoryError):
        return RedisOutOfMemory()
    if isinstance(err, redis.exceptions.ReadOnlyError):
        return RedisReadOnly()
    return RedisUnavailable(f"Redis is unavailable ({type(err).__name__})")
