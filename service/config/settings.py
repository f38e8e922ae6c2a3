"""The settings every process runs with: their defaults and the rules across them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from .parse import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

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
    # A session unhealthy this long (failed: CrashLoopBackOff, ImagePullBackOff...; or waking
    # between two crashes) has its queued messages failed with the reason, so they neither
    # wait forever nor keep the crashing pod up (KEDA then scales it to 0).
    failed_session_grace_seconds: int = 300
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
        """Settings read from the environment (os.environ unless given), checked."""
        from .environment import read_settings  # it builds Settings: imported when used

        settings = cls(**read_settings(os.environ if environ is None else environ))
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

