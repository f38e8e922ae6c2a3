"""What processes coordinate through in Redis: pub/sub notices, named leases, idempotent
creates and the workers' reports."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from service.store.failures import UNAVAILABLE, unavailable
from service.store.keys import (
    INSTALLATION_KEY,
    WORK_CHANNEL,
    WORKER_REPORTS,
    _idempotency_key,
    _lease_key,
)

_WORKER_REPORT_KEPT_SECONDS = 3600  # a report older than this is a replica long gone


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class Coordination:
    def __init__(self, db: Any) -> None:
        self.db = db  # client.Database

    def report_worker(self, worker_id: str, stalled: list[str]) -> None:
        self.db.call(self.db.redis.hset, WORKER_REPORTS, worker_id,
                   json.dumps({"at": time.time(), "stalled": stalled}))

    def worker_reports(self) -> dict[str, dict]:
        """Every worker's last report; reports of replicas long gone are dropped on the way."""
        raw = self.db.call(self.db.redis.hgetall, WORKER_REPORTS)
        reports = {worker: json.loads(value) for worker, value in raw.items()}
        gone = [worker for worker, report in reports.items()
                if report["at"] < time.time() - _WORKER_REPORT_KEPT_SECONDS]
        if gone:
            self.db.call(self.db.redis.hdel, WORKER_REPORTS, *gone)
        return {worker: report for worker, report in reports.items() if worker not in gone}

    def work_notifications(self, stop: Any,
                           on_tick: Callable[[], None] | None = None) -> Iterator[str | None]:
        """Session ids as they get work (a chat, a wake), from any process; first None, once
        subscribed: anything published before may have been missed. Ends when `stop` is set;
        raises RedisUnavailable when the subscription breaks. `on_tick`: see notices."""
        for notice in self.notices((WORK_CHANNEL,), stop, on_tick=on_tick):
            yield None if notice is None else notice[1]

    def notices(self, channels: tuple[str, ...], stop: Any,
                on_tick: Callable[[], None] | None = None) -> Iterator[tuple[str, str] | None]:
        """(channel, data) as published on any of `channels`; first None, once subscribed
        (anything published before may have been missed). Ends when `stop` is set; raises
        RedisUnavailable when the subscription breaks. `on_tick` is called at least every
        second while the subscription is healthy, notices or not: a quiet installation is a
        live listener, not a stalled one."""
        pubsub = self.db.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*channels)
            yield None
            while not stop.is_set():
                if on_tick is not None:
                    on_tick()
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    yield _decode(message["channel"]), _decode(message["data"])
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        finally:
            with contextlib.suppress(*UNAVAILABLE):
                pubsub.close()

    # -- idempotent create ---------------------------------------------------------------

    def begin_idempotent(self, scope: str, *, ttl_seconds: int) -> dict | bool | None:
        """None: first use (now marked pending); False: another request holds it;
        a dict: the stored response of the finished create."""
        key = _idempotency_key(scope)
        try:
            if self.db.redis.set(key, "pending", nx=True, ex=ttl_seconds):
                return None
            stored = self.db.redis.get(key)
        except UNAVAILABLE as err:
            raise unavailable(err) from err
        if stored is None or stored == "pending":
            return False
        return json.loads(stored)

    def finish_idempotent(self, scope: str, response: dict | None, *, ttl_seconds: int) -> None:
        key = _idempotency_key(scope)
        if response is None:
            self.db.call(self.db.redis.delete, key)
        else:
            self.db.call(self.db.redis.set, key, json.dumps(response), ex=ttl_seconds)

    # -- leases (worker coordination) ----------------------------------------------------

    def claim_installation(self, namespace: str) -> str:
        """The sessions namespace this database serves: `namespace` if none was recorded
        yet (it is now), else the one recorded first."""
        pipe = self.db.redis.pipeline(transaction=True)
        pipe.set(INSTALLATION_KEY, namespace, nx=True)
        pipe.get(INSTALLATION_KEY)
        return _decode(self.db.call(pipe.execute)[1])

    def installation_conflict(self, namespace: str) -> str | None:
        """None while this database serves `namespace` (claiming it if nobody has), else
        what an operator reads: whose it is and the way out."""
        owner = self.claim_installation(namespace)
        if owner == namespace:
            return None
        return (f"REDIS_URL's database serves the sessions namespace {owner!r}, and this "
                f"worker has NAMESPACE={namespace!r}. Give each installation its own Redis "
                f"database (or, if {owner!r} is gone for good, delete the key "
                f"{INSTALLATION_KEY})")

    def acquire_lease(self, name: str, holder: str, *, seconds: int) -> bool:
        """Take or renew a named lease; True while `holder` has it."""
        key = _lease_key(name)
        try:
            if self.db.redis.set(key, holder, nx=True, ex=seconds):
                return True
            if self.db.redis.get(key) == holder:
                self.db.redis.expire(key, seconds)
                return True
            return False
        except UNAVAILABLE as err:
            raise unavailable(err) from err

    def release_lease(self, name: str, holder: str) -> None:
        """Give a named lease up, if `holder` still has it."""
        self.db.run("release_lease", [_lease_key(name)], [holder])
