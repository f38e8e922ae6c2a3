"""Per client IP and route limits, shared by every replica and worker through Redis.

Fixed windows from the `limits` library: one Redis round trip per request (INCR + EXPIRE in a
script); the window's reset time is read only when a request is refused, for the headers.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from service.core.errors import RateLimited
from service.store import UNAVAILABLE, unavailable


def limits_uri(redis_url: str) -> str:
    """`limits` names a Unix-socket Redis `redis+unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://"):]
    return redis_url


class RateLimiter:
    def __init__(self, redis_url: str, limits: dict[str, str], *, enabled: bool,
                 socket_timeout_seconds: float) -> None:
        self.enabled = enabled
        self.items: dict[str, RateLimitItem] = {
            route: parse(text) for route, text in limits.items()
        }
        self._limiter: FixedWindowRateLimiter | None = None
        if enabled:
            storage = RedisStorage(limits_uri(redis_url), socket_timeout=socket_timeout_seconds,
                                   socket_connect_timeout=socket_timeout_seconds)
            self._limiter = FixedWindowRateLimiter(storage)

    def hit(self, route: str, client_ip: str) -> None:
        """Count one request; raise RateLimited once the route's budget for this IP is spent."""
        if self._limiter is None or route not in self.items:
            return
        item = self.items[route]
        try:
            if self._limiter.hit(item, route, client_ip):
                return
            stats = self._limiter.get_window_stats(item, route, client_ip)
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        retry_after = math.ceil(stats.reset_time - time.time())
        raise RateLimited(
            f"Rate limit of {item} exceeded for this client; retry in {max(retry_after, 1)}s",
            limit=item.amount, remaining=stats.remaining, reset_epoch=int(stats.reset_time),
            retry_after_seconds=retry_after,
        )
