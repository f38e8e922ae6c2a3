"""What the views work with, built once per app by the factory and held by the app: the
sessions layer, the store and cluster clients, event streams, auth, limits and probes."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import current_app

from service.core.config import Settings
from service.http.auth import Authenticator
from service.http.event_stream import EventStreams
from service.http.ratelimit import RateLimiter
from service.http.readiness import Readiness
from service.kube import Kube
from service.sessions import Sessions
from service.store import Store


@dataclasses.dataclass
class Components:
    settings: Settings
    sessions: Sessions
    store: Store
    kube: Kube
    streams: EventStreams
    auth: Authenticator
    limiter: RateLimiter
    readiness: Readiness
    registry: Any  # prometheus_client.CollectorRegistry
    openapi: dict


def components() -> Components:
    """The app's components, in a request."""
    return current_app.extensions["session_manager"]
