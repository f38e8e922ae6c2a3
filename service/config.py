"""Settings: the one place that reads the environment.

Every value is parsed and checked once, at start; a bad value raises ConfigError naming the
variable, so the process refuses to start instead of failing on the first request.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from . import envparse, names
from .envparse import ConfigError

__all__ = ["ConfigError", "Settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent

# KEDA_SCALER: how KEDA learns a session has work. "push": the worker's external-push scaler
# (gRPC, one connection per worker replica for all sessions, wakes on admission); "redis":
# KEDA's redis scaler polls each session's work set (one Redis connection per session).
SCALER_MODES = {"push": "external-push", "redis": "redis"}  # mode -> KEDA trigger type
TEMPLATES_OF_MODE = {"push": REPO_ROOT / "templates", "redis": REPO_ROOT / "templates-redis"}

RATE_LIMITED_ROUTES = ("create", "wake", "sleep", "status", "chat", "delete", "messages",
                       "events")
DEFAULT_RATE_LIMITS = {
    "create": "100/minute",
    "wake": "50/minute",
    "sleep": "50/minute",
    "status": "200/minute",
    "chat": "100/minute",
    "delete": "50/minute",
    "messages": "200/minute",
    "events": "60/minute",  # stream opens: a client reconnects every EVENT_STREAM_MAX_SECONDS
}


@dataclasses.dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout_seconds: float = 2.0
    # Connections to Redis one process opens at most; past them a request waits for one
    # (up to REDIS_SOCKET_TIMEOUT_SECONDS). Replicas x this stays under Redis' maxclients.
    redis_max_connections: int = 100
    session_ttl_seconds: int = 86400
    idle_timeout_seconds: int = 120
    user_pod_image: str = "session-manager-demo-agent:0.1.0"
    user_pod_port: int = 1111
    user_pod_cpu_request: str = "250m"
    user_pod_memory_request: str = "256Mi"
    user_pod_cpu_limit: str = "500m"
    user_pod_memory_limit: str = "512Mi"
    namespace: str = "sessions"
    templates_dir: Path = REPO_ROOT / "templates"
    log_level: str = "INFO"
    api_keys: tuple[str, ...] = ()
    auth_disabled: bool = False
    rate_limits_enabled: bool = True
    rate_limits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS)
    )
    trusted_proxies: int = 0
    keda_polling_interval_seconds: int = 5
    keda_cooldown_period_seconds: int = 30
    keda_initial_cooldown_period_seconds: int = 120
    # Redis as KEDA's redis scaler reaches it (KEDA_SCALER=redis): derived from REDIS_URL, so
    # database, TLS and user cannot silently differ; KEDA_REDIS_HOST/PORT override only the
    # address (where KEDA's network sees Redis elsewhere than the service does).
    keda_redis_host: str = "127.0.0.1"
    keda_redis_port: int = 6379
    keda_redis_database: int = 0
    keda_redis_tls: bool = False
    keda_redis_username: str = ""
    redis_secret_name: str = "redis-credentials"  # noqa: S105 - a Secret's name
    redis_secret_key: str = "password"  # noqa: S105 - a key inside that Secret
    keda_scaler: str = "push"
    # Where KEDA dials the push scaler (rendered into ScaledObjects), where the worker serves
    # it, the worker's serving certificate (tls.crt, tls.key and the ca.crt that signed KEDA's
    # client certificate), and the Secret in NAMESPACE that gives KEDA its side.
    scaler_address: str = "session-manager-scaler.session-manager.svc.cluster.local:9090"
    scaler_port: int = 9090
    scaler_tls_dir: Path | None = None
    scaler_secret_name: str = "session-manager-scaler-client"  # noqa: S105 - a Secret's name
    worker_health_port: int = 8081
    pod_url_template: str = "http://{name}.{namespace}.svc.cluster.local:80"
    pod_timeout_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_message_chars: int = 16000
    max_queued_messages: int = 100
    max_messages_kept: int = 1000
    # Bytes one conversation may keep in Redis (messages and replies; the oldest settled
    # messages make room), and the largest reply a pod may give (larger: that message fails).
    max_session_bytes: int = 2 * 1024 * 1024
    max_reply_bytes: int = 256 * 1024
    idempotency_ttl_seconds: int = 600
    delivery_max_attempts: int = 5
    delivery_backoff_seconds: float = 1.0
    delivery_lease_seconds: int = 60
    delivery_concurrency: int = 32  # sessions one worker delivers to at once
    reconcile_interval_seconds: int = 30
    reconcile_grace_seconds: int = 300
    # Idle this long, a session is archived: its bundle is swept from the cluster, its record
    # and conversation stay (until SESSION_TTL); a chat or a wake applies it again. 0: never.
    archive_after_seconds: int = 3600
    # Bundles the archiver sweeps, the restorer applies and `reapply` applies at once.
    bundle_concurrency: int = 4
    worker_poll_interval_seconds: float = 0.5
    port: int = 8080
    bind_address: str = "0.0.0.0"  # noqa: S104 - a pod serves on its own address
    # gunicorn: worker processes (None: cores + 1, at most 4), connections each one holds at
    # once (gevent: a waiting request costs a greenlet, not a thread), and how many of those
    # may be chats forwarded straight to a pod; beyond that a chat is queued for the worker.
    web_concurrency: int | None = None
    web_connections: int = 2000
    max_forwards: int = 200
    # /events: open streams per process and per session (any replica), a comment every
    # heartbeat (keeps proxies from cutting an idle stream; a client that left is noticed),
    # a stream's longest life (its client resumes with Last-Event-ID: load spreads again
    # after a scale-out), and the events each session's log keeps.
    max_event_streams: int = 1000
    max_event_streams_per_session: int = 5
    events_heartbeat_seconds: float = 30.0  # under the 60 s idle timeout of common proxies
    event_stream_max_seconds: int = 300
    max_events_kept: int = 1000
    # The small chat page at /ui (a demo of the public API; `make run` turns it on).
    chat_page_enabled: bool = False
    # The longest a chat is held for its reply (`Prefer: wait=N` is capped to it). A stopping
    # API process answers what it holds at once (202), so this may exceed the graceful timeout.
    max_wait_seconds: int = 30

    @property
    def activity_ttl_seconds(self) -> int:
        """TTL of the key KEDA reads as "recently active".

        KEDA scales to 0 `cooldownPeriod` after the last active poll, so the key must vanish
        that much earlier for the pod to sleep IDLE_TIMEOUT after the last activity.
        """
        return max(1, self.idle_timeout_seconds - self.keda_cooldown_period_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        read = envparse.Reader(env)
        defaults = cls()
        values = dict(
            redis_url=envparse.redis_url(env),
            redis_max_connections=read.number("REDIS_MAX_CONNECTIONS",
                                              defaults.redis_max_connections, minimum=4,
                                              maximum=10000),
            redis_socket_timeout_seconds=read.number(
                "REDIS_SOCKET_TIMEOUT_SECONDS", defaults.redis_socket_timeout_seconds, float,
                minimum=0.05,
            ),
            session_ttl_seconds=read.number("SESSION_TTL", defaults.session_ttl_seconds),
            idle_timeout_seconds=read.number("IDLE_TIMEOUT", defaults.idle_timeout_seconds),
            user_pod_image=read.checked(
                "USER_POD_IMAGE", defaults.user_pod_image, names.check_image
            ),
            user_pod_port=read.number("USER_POD_PORT", defaults.user_pod_port, maximum=65535),
            user_pod_cpu_request=read.checked(
                "USER_POD_CPU_REQUEST", defaults.user_pod_cpu_request, names.check_quantity
            ),
            user_pod_memory_request=read.checked(
                "USER_POD_MEMORY_REQUEST", defaults.user_pod_memory_request, names.check_quantity
            ),
            user_pod_cpu_limit=read.checked(
                "USER_POD_CPU_LIMIT", defaults.user_pod_cpu_limit, names.check_quantity
            ),
            user_pod_memory_limit=read.checked(
                "USER_POD_MEMORY_LIMIT", defaults.user_pod_memory_limit, names.check_quantity
            ),
            namespace=read.checked("NAMESPACE", defaults.namespace, names.check_dns_label),
            templates_dir=read.checked(
                "TEMPLATES_DIR",
                TEMPLATES_OF_MODE.get(env.get("KEDA_SCALER", "").strip().lower(),
                                      defaults.templates_dir),
                envparse.existing_dir),
            log_level=read.choice(
                "LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            api_keys=read.checked("API_KEYS", (), envparse.api_keys),
            auth_disabled=read.flag("AUTH_DISABLED", False),
            rate_limits_enabled=read.flag("RATE_LIMITS_ENABLED", True),
            rate_limits={
                route: read.checked(f"RATE_LIMIT_{route.upper()}", default, envparse.rate_limit)
                for route, default in DEFAULT_RATE_LIMITS.items()
            },
            trusted_proxies=read.number("TRUSTED_PROXIES", 0, minimum=0),
            keda_polling_interval_seconds=read.number(
                "KEDA_POLLING_INTERVAL", defaults.keda_polling_interval_seconds
            ),
            keda_cooldown_period_seconds=read.number(
                "KEDA_COOLDOWN_PERIOD", defaults.keda_cooldown_period_seconds, minimum=0
            ),
            keda_initial_cooldown_period_seconds=read.number(
                "KEDA_INITIAL_COOLDOWN_PERIOD",
                defaults.keda_initial_cooldown_period_seconds,
                minimum=0,
            ),
            **_keda_redis(read, env),
            redis_secret_name=read.checked(
                "REDIS_SECRET_NAME", defaults.redis_secret_name, names.check_dns_subdomain
            ),
            redis_secret_key=read.checked(
                "REDIS_SECRET_KEY", defaults.redis_secret_key, names.check_secret_key
            ),
            keda_scaler=read.choice("KEDA_SCALER", defaults.keda_scaler,
                                    tuple(SCALER_MODES), upper=False),
            scaler_address=read.checked("SCALER_ADDRESS", defaults.scaler_address,
                                        envparse.host_and_port),
            # 0: any free port (tests running several workers on one machine).
            scaler_port=read.number("SCALER_PORT", defaults.scaler_port, minimum=0,
                                    maximum=65535),
            scaler_tls_dir=read.checked("SCALER_TLS_DIR", None, envparse.tls_dir),
            scaler_secret_name=read.checked(
                "SCALER_SECRET_NAME", defaults.scaler_secret_name, names.check_dns_subdomain
            ),
            worker_health_port=read.number(
                "WORKER_HEALTH_PORT", defaults.worker_health_port, minimum=0, maximum=65535
            ),
            pod_url_template=read.checked(
                "POD_URL_TEMPLATE", defaults.pod_url_template, envparse.pod_url_template
            ),
            pod_timeout_seconds=read.number(
                "POD_TIMEOUT_SECONDS", defaults.pod_timeout_seconds, float, minimum=0.1
            ),
            max_body_bytes=read.number("MAX_BODY_BYTES", defaults.max_body_bytes),
            max_message_chars=read.number("MAX_MESSAGE_CHARS", defaults.max_message_chars),
            max_queued_messages=read.number("MAX_QUEUED_MESSAGES", defaults.max_queued_messages),
            max_messages_kept=read.number("MAX_MESSAGES_KEPT", defaults.max_messages_kept),
            max_session_bytes=read.number("MAX_SESSION_BYTES", defaults.max_session_bytes),
            max_reply_bytes=read.number("MAX_REPLY_BYTES", defaults.max_reply_bytes),
            idempotency_ttl_seconds=read.number(
                "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds
            ),
            delivery_max_attempts=read.number(
                "DELIVERY_MAX_ATTEMPTS", defaults.delivery_max_attempts
            ),
            delivery_backoff_seconds=read.number(
                "DELIVERY_BACKOFF_SECONDS", defaults.delivery_backoff_seconds, float, minimum=0
            ),
            delivery_lease_seconds=read.number(
                "DELIVERY_LEASE_SECONDS", defaults.delivery_lease_seconds
            ),
            delivery_concurrency=read.number(
                "DELIVERY_CONCURRENCY", defaults.delivery_concurrency, maximum=1024
            ),
            reconcile_interval_seconds=read.number(
                "RECONCILE_INTERVAL_SECONDS", defaults.reconcile_interval_seconds
            ),
            reconcile_grace_seconds=read.number(
                "RECONCILE_GRACE_SECONDS", defaults.reconcile_grace_seconds, minimum=0
            ),
            archive_after_seconds=read.number(
                "ARCHIVE_AFTER_SECONDS", defaults.archive_after_seconds, minimum=0),
            bundle_concurrency=read.number(
                "BUNDLE_CONCURRENCY", defaults.bundle_concurrency, maximum=64),
            worker_poll_interval_seconds=read.number(
                "WORKER_POLL_INTERVAL_SECONDS", defaults.worker_poll_interval_seconds, float,
                minimum=0.01,
            ),
            port=read.number("PORT", defaults.port, maximum=65535),
            bind_address=read.checked("BIND_ADDRESS", defaults.bind_address,
                                      envparse.bind_address),
            web_concurrency=read.number("WEB_CONCURRENCY", None, maximum=64),
            web_connections=read.number("WEB_CONNECTIONS", defaults.web_connections,
                                        minimum=10),
            max_forwards=read.number("MAX_FORWARDS", defaults.max_forwards, minimum=0),
            max_event_streams=read.number("MAX_EVENT_STREAMS", defaults.max_event_streams,
                                          minimum=0),
            max_event_streams_per_session=read.number(
                "MAX_EVENT_STREAMS_PER_SESSION", defaults.max_event_streams_per_session,
                minimum=1, maximum=100),
            events_heartbeat_seconds=read.number(
                "EVENTS_HEARTBEAT_SECONDS", defaults.events_heartbeat_seconds, float,
                minimum=0.1, maximum=300),
            event_stream_max_seconds=read.number(
                "EVENT_STREAM_MAX_SECONDS", defaults.event_stream_max_seconds, minimum=1),
            max_events_kept=read.number("MAX_EVENTS_KEPT", defaults.max_events_kept,
                                        minimum=10),
            chat_page_enabled=read.flag("CHAT_PAGE_ENABLED", False),
            max_wait_seconds=read.number("MAX_WAIT_SECONDS", defaults.max_wait_seconds,
                                         minimum=0, maximum=300),
        )
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules; also run on settings built in code (tests)."""
        if self.delivery_lease_seconds <= self.pod_timeout_seconds:
            raise ConfigError(
                "DELIVERY_LEASE_SECONDS must be longer than POD_TIMEOUT_SECONDS "
                f"({self.delivery_lease_seconds} <= {self.pod_timeout_seconds}): a delivery "
                "still waiting on its pod must not be taken over by another worker"
            )
        if self.max_queued_messages >= self.max_messages_kept:
            raise ConfigError(
                "MAX_QUEUED_MESSAGES must be smaller than MAX_MESSAGES_KEPT "
                f"({self.max_queued_messages} >= {self.max_messages_kept}): the conversation "
                "is trimmed to MAX_MESSAGES_KEPT, so a full backlog would drop messages "
                "already answered 202 before they are delivered"
            )
        exchange = 4 * self.max_message_chars + self.max_reply_bytes  # UTF-8: up to 4 bytes
        if self.max_session_bytes < 2 * exchange:
            raise ConfigError(
                f"MAX_SESSION_BYTES={self.max_session_bytes} is too small: it must hold at "
                f"least two exchanges of MAX_MESSAGE_CHARS x 4 bytes + MAX_REPLY_BYTES "
                f"({2 * exchange} bytes)"
            )
        if self.max_forwards + self.max_event_streams >= self.web_connections:
            raise ConfigError(
                "MAX_FORWARDS + MAX_EVENT_STREAMS must be smaller than WEB_CONNECTIONS "
                f"({self.max_forwards} + {self.max_event_streams} >= "
                f"{self.web_connections}): chats waiting on pods and open event streams "
                "must leave connections for health probes and other routes"
            )
        if self.keda_cooldown_period_seconds >= self.idle_timeout_seconds:
            raise ConfigError(
                "KEDA_COOLDOWN_PERIOD must be smaller than IDLE_TIMEOUT "
                f"({self.keda_cooldown_period_seconds} >= {self.idle_timeout_seconds})"
            )

        if 0 < self.archive_after_seconds <= self.idle_timeout_seconds:
            raise ConfigError(
                "ARCHIVE_AFTER_SECONDS must be 0 (never archive) or longer than IDLE_TIMEOUT "
                f"({self.archive_after_seconds} <= {self.idle_timeout_seconds}): a session is "
                "archived only once it has slept")

    def check_serving(self) -> None:
        """Rules for processes that answer requests (render/validate don't need keys)."""
        self.check()
        if not self.api_keys and not self.auth_disabled:
            raise ConfigError(
                "API_KEYS is empty: set one or more comma-separated keys, or AUTH_DISABLED=true "
                "for local development only"
            )

    def replace(self, **changes: object) -> Settings:
        settings = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        settings.check()
        return settings


def _keda_redis(read: envparse.Reader, env: Mapping[str, str]) -> dict[str, object]:
    url = urlsplit(envparse.redis_url(env))
    if url.scheme == "unix" and not env.get("KEDA_REDIS_HOST", "").strip() \
            and env.get("KEDA_SCALER", "").strip().lower() == "redis":
        raise ConfigError("REDIS_URL is a Unix socket, which KEDA cannot dial: set "
                          "KEDA_REDIS_HOST (and KEDA_REDIS_PORT) to its TCP address")
    database = url.path.strip("/") or parse_qs(url.query).get("db", ["0"])[0]
    if url.scheme != "unix" and not database.isdigit():
        raise ConfigError(f"REDIS_URL: database {database!r} is not a number")
    return {
        "keda_redis_host": read.checked("KEDA_REDIS_HOST", url.hostname or "127.0.0.1",
                                        names.check_hostname),
        "keda_redis_port": read.number("KEDA_REDIS_PORT", url.port or 6379, maximum=65535),
        "keda_redis_database": int(database) if url.scheme != "unix" else 0,
        "keda_redis_tls": url.scheme == "rediss",
        "keda_redis_username": unquote(url.username or ""),
    }
