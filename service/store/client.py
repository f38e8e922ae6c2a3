"""The service's Redis: one client, the Lua scripts, and the parts of the store that use them.

`Database` is the connection and the scripts (each sent with the shared functions of `lua/lib/`
in front, the constants they read, and the status transition table). `Store` holds one part
per concern — records, their indexes, messages, the event log, the bundle index, coordination,
the warm pool — each a small object over the same `Database`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from service.core.clock import iso, utc_now
from service.core.transitions import lua_table
from service.store.bundle_index import BundleIndex
from service.store.coordination import Coordination
from service.store.event_log import DEFAULT_EVENTS_KEPT, EventLog
from service.store.failures import UNAVAILABLE, unavailable
from service.store.index import SessionIndex
from service.store.keys import (
    EVENTS_CHANNEL,
    POOL_INDEX,
    POOL_READY,
    WAKE_HISTOGRAM,
    WORK_CHANNEL,
)
from service.store.messages import Messages
from service.store.pool import SessionPool
from service.store.records import SessionRecords

DEFAULT_MAX_CONNECTIONS = 100  # per process (REDIS_MAX_CONNECTIONS)
# A wake's first_byte phase counts only for a reply this soon after the wake was asked: a
# chat sent an hour later says nothing of the wake.
WAKE_FIRST_BYTE_WINDOW_SECONDS = 120
_LUA = Path(__file__).resolve().parent / "lua"


class Database:
    """A Redis client and the scripts, with Redis' failures as our own errors."""

    def __init__(self, client: redis.Redis, *, session_ttl_seconds: int,
                 activity_ttl_seconds: int, events_kept: int = DEFAULT_EVENTS_KEPT) -> None:
        self.redis = client
        self.session_ttl = session_ttl_seconds
        self.activity_ttl = activity_ttl_seconds
        library = (f"local EVENTS_KEPT, EVENTS_CHANNEL = {int(events_kept)}, "
                   f"'{EVENTS_CHANNEL}'\nlocal POOL_INDEX, POOL_READY = '{POOL_INDEX}', "
                   f"'{POOL_READY}'\nlocal WAKE_HISTOGRAM, WAKE_FIRST_BYTE_WINDOW_MS = "
                   f"'{WAKE_HISTOGRAM}', {WAKE_FIRST_BYTE_WINDOW_SECONDS * 1000}\n"
                   f"local TRANSITIONS = {lua_table()}\n")
        library += "".join(path.read_text() + "\n"
                           for path in sorted((_LUA / "lib").glob("*.lua")))
        self._scripts = {
            path.stem: client.register_script(library + path.read_text())
            for path in _LUA.glob("*.lua")
        }

    def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._scripts[script](keys=keys, args=args)
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def pipelined(self, calls: list[tuple[str, str]]) -> list[Any]:
        """(command, key) pairs in one round trip."""
        if not calls:
            return []
        try:
            pipe = self.redis.pipeline(transaction=False)
            for command, key in calls:
                getattr(pipe, command)(key)
            return pipe.execute()
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def activity_args(self) -> list[Any]:
        """now_iso, ttl, expires_at, activity_ttl, work_channel: what lib/activity.lua needs."""
        now = utc_now()
        return [iso(now), self.session_ttl, int(now.timestamp()) + self.session_ttl,
                self.activity_ttl, WORK_CHANNEL]


class Store:
    def __init__(self, client: redis.Redis, *, session_ttl_seconds: int,
                 activity_ttl_seconds: int, events_kept: int = DEFAULT_EVENTS_KEPT) -> None:
        self.db = Database(client, session_ttl_seconds=session_ttl_seconds,
                           activity_ttl_seconds=activity_ttl_seconds, events_kept=events_kept)
        self.redis = client
        self.records = SessionRecords(self.db)
        self.index = SessionIndex(self.db)
        self.messages = Messages(self.db)
        self.events = EventLog(self.db)
        self.bundles = BundleIndex(self.db)
        self.coordination = Coordination(self.db)
        self.pool = SessionPool(self.db)

    @classmethod
    def from_url(cls, url: str, *, socket_timeout_seconds: float, session_ttl_seconds: int,
                 activity_ttl_seconds: int, events_kept: int = DEFAULT_EVENTS_KEPT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Store:
        # A bounded pool that makes a caller wait for a free connection (up to the socket
        # timeout) rather than fail: under gevent a thousand requests may want Redis at the
        # same instant (one event fanned out to every open stream), and redis-py's default
        # pool raises past 100 connections.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout_seconds,
            socket_timeout=socket_timeout_seconds,
            socket_connect_timeout=socket_timeout_seconds, health_check_interval=30,
            decode_responses=True,
        )
        return cls(redis.Redis(connection_pool=pool), session_ttl_seconds=session_ttl_seconds,
                   activity_ttl_seconds=activity_ttl_seconds, events_kept=events_kept)

    def ping(self) -> None:
        self.db.call(self.redis.ping)

    def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) in bytes; maxmemory 0 means no limit."""
        info = self.db.call(self.redis.info, "memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
