"""The settings every process runs with, each defined once: its field, environment variable,
default, bounds and one line of documentation (`setting(...)`). The reader of the environment
(`environment`) and the reference in the docs (`reference`) are made from these definitions;
the cross-field rules are `Settings.check`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.core import names
from service.core.config import parse
from service.core.config.parse import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]

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
class Definition:
    """How one setting is read and documented. `env` is None for a value derived from
    another (KEDA's view of REDIS_URL); `read` names a reader of its own in `environment`
    for the few that are more than one variable."""

    env: str | None
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[str], Any] | None = None  # a parser of `parse`, for text values
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # the default as the reference shows it
    read: str | None = None
    group: str = ""


def setting(default: Any = dataclasses.MISSING, *, env: str | None, doc: str,
            factory: Callable[[], Any] | None = None, **definition: Any) -> Any:
    metadata = {"setting": Definition(env=env, doc=doc, **definition)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def definitions() -> list[tuple[dataclasses.Field, Definition]]:
    """Every setting's field and definition, in the order they are declared."""
    return [(field, field.metadata["setting"]) for field in dataclasses.fields(Settings)]


@dataclasses.dataclass(frozen=True)
class Settings:
    # -- Redis ---------------------------------------------------------------------------
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", env="REDIS_URL", read="redis_url", group="Redis",
        shown_default="built from REDIS_HOST (127.0.0.1), REDIS_PORT (6379), REDIS_PASSWORD",
        doc="Redis for records, queues and rate limits (redis://, rediss:// or unix://). One "
            "installation (one NAMESPACE) per database: the first worker records its "
            "namespace there, and a worker of another refuses to start (exit 2)")
    redis_socket_timeout_seconds: float = setting(
        2.0, env="REDIS_SOCKET_TIMEOUT_SECONDS", minimum=0.05, group="Redis",
        doc="socket and connect timeout of every Redis call")
    redis_max_connections: int = setting(
        100, env="REDIS_MAX_CONNECTIONS", minimum=4, maximum=10000, group="Redis",
        doc="Redis connections one process opens at most; past them a request waits for one "
            "(up to REDIS_SOCKET_TIMEOUT_SECONDS); replicas x this stays under maxclients")
    # -- sessions --------------------------------------------------------------------------
    session_ttl_seconds: int = setting(
        86400, env="SESSION_TTL", group="Sessions",
        doc="seconds a record lives after its last activity; then its bundle is swept")
    idle_timeout_seconds: int = setting(
        120, env="IDLE_TIMEOUT", group="Sessions",
        doc="seconds after the last activity until KEDA scales the pod to 0")
    archive_after_seconds: int = setting(
        3600, env="ARCHIVE_AFTER_SECONDS", minimum=0, group="Sessions",
        doc="idle seconds after which a session is archived (bundle swept, record and "
            "conversation kept); 0: never; must exceed IDLE_TIMEOUT")
    archive_keep_kinds: tuple[str, ...] = setting(
        ("PersistentVolumeClaim",), env="ARCHIVE_KEEP_KINDS", check=parse.kind_names,
        group="Sessions", shown_default="PersistentVolumeClaim",
        doc="kinds of a bundle an archive keeps (comma-separated): a session's workspace "
            "survives the archive and a restore re-attaches it; a delete sweeps everything")
    failed_session_grace_seconds: int = setting(
        300, env="FAILED_SESSION_GRACE_SECONDS", group="Sessions",
        doc="a session failed (or crash-looping) this long has its queued chats failed with "
            "the reason, and lets its pod go")
    namespace: str = setting(
        "sessions", env="NAMESPACE", check=names.check_dns_label, group="Sessions",
        doc="the namespace session bundles live in")
    templates_dir: Path = setting(
        REPO_ROOT / "templates", env="TEMPLATES_DIR", read="templates_dir", group="Sessions",
        shown_default="templates/ (push) or templates-redis/ (redis) of this repo",
        doc="the bundle's Jinja templates")
    user_pod_image: str = setting(
        "session-manager-demo-agent:0.1.0", env="USER_POD_IMAGE",
        check=names.check_image, group="Session pods", doc="session pod image")
    user_pod_port: int = setting(1111, env="USER_POD_PORT", maximum=65535,
                                 group="Session pods", doc="session pod port")
    user_pod_cpu_request: str = setting(
        "250m", env="USER_POD_CPU_REQUEST", check=names.check_quantity,
        group="Session pods", doc="session pod CPU request")
    user_pod_memory_request: str = setting(
        "256Mi", env="USER_POD_MEMORY_REQUEST", check=names.check_quantity,
        group="Session pods", doc="session pod memory request")
    user_pod_cpu_limit: str = setting(
        "500m", env="USER_POD_CPU_LIMIT", check=names.check_quantity,
        group="Session pods", doc="session pod CPU limit")
    user_pod_memory_limit: str = setting(
        "512Mi", env="USER_POD_MEMORY_LIMIT", check=names.check_quantity,
        group="Session pods", doc="session pod memory limit")
    pod_url_template: str = setting(
        "http://{name}.{namespace}.svc.cluster.local:80", env="POD_URL_TEMPLATE",
        check=parse.pod_url_template, group="Session pods",
        doc="how the control plane reaches a pod: {name}, {namespace}, {session_id}, {port}, "
            "and {pod_ip}, the Ready pod's address as the status watch saw it (for a control "
            "plane without cluster DNS: http://{pod_ip}:{port})")
    pod_timeout_seconds: float = setting(
        30.0, env="POD_TIMEOUT_SECONDS", minimum=0.1, group="Session pods",
        doc="deadline of one whole exchange with a pod")
    history_max_messages: int = setting(
        20, env="HISTORY_MAX_MESSAGES", minimum=0, maximum=1000, group="Session pods",
        doc="earlier settled exchanges sent with every delivery as `history` (the newest "
            "kept); 0: none")
    history_max_bytes: int = setting(
        64 * 1024, env="HISTORY_MAX_BYTES", minimum=0, group="Session pods",
        doc="the most bytes of `history` one delivery carries (the newest exchanges kept); "
            "0: none")
    max_reply_bytes: int = setting(
        256 * 1024, env="MAX_REPLY_BYTES", group="Session pods",
        doc="the largest pod reply kept; a larger one fails its message at once")
    # -- KEDA ------------------------------------------------------------------------------
    keda_scaler: str = setting(
        "push", env="KEDA_SCALER", choices=tuple(SCALER_MODES), group="KEDA",
        doc="push (the worker's external-push scaler) or redis (KEDA's redis scaler); picks "
            "the default TEMPLATES_DIR")
    keda_polling_interval_seconds: int = setting(
        5, env="KEDA_POLLING_INTERVAL", group="KEDA",
        doc="ScaledObject pollingInterval (bounds wake latency in redis mode)")
    keda_cooldown_period_seconds: int = setting(
        30, env="KEDA_COOLDOWN_PERIOD", minimum=0, group="KEDA",
        doc="ScaledObject cooldownPeriod; must be smaller than IDLE_TIMEOUT")
    keda_initial_cooldown_period_seconds: int = setting(
        120, env="KEDA_INITIAL_COOLDOWN_PERIOD", minimum=0, group="KEDA",
        doc="ScaledObject initialCooldownPeriod (KEDA >= 2.14): a new session stays up this long")
    scaler_address: str = setting(
        "session-manager-scaler.session-manager.svc.cluster.local:9090", env="SCALER_ADDRESS",
        check=parse.host_and_port, group="KEDA",
        doc="where KEDA dials the push scaler (rendered into ScaledObjects)")
    scaler_port: int = setting(9090, env="SCALER_PORT", minimum=0, maximum=65535, group="KEDA",
                               doc="where each worker serves the push scaler (0: any free port)")
    scaler_tls_dir: Path | None = setting(
        None, env="SCALER_TLS_DIR", check=parse.tls_dir, group="KEDA",
        shown_default="none (required for the worker in push mode)",
        doc="tls.crt, tls.key (the scaler's serving certificate) and ca.crt (KEDA's client CA)")
    scaler_secret_name: str = setting(
        "session-manager-scaler-client", env="SCALER_SECRET_NAME", group="KEDA",
        check=names.check_dns_subdomain,
        doc="Secret in NAMESPACE with KEDA's side of the scaler's mutual TLS")
    keda_redis_host: str = setting(
        "127.0.0.1", env="KEDA_REDIS_HOST", read="keda_redis", group="KEDA",
        shown_default="the host of REDIS_URL",
        doc="where KEDA's redis scaler dials Redis (KEDA_SCALER=redis), if its network sees it "
            "elsewhere")
    keda_redis_port: int = setting(6379, env="KEDA_REDIS_PORT", read="keda_redis",
                                   group="KEDA", shown_default="the port of REDIS_URL",
                                   doc="the port of KEDA_REDIS_HOST")
    keda_redis_database: int = setting(0, env=None, read="keda_redis", group="KEDA",
                                       doc="the database of REDIS_URL, as KEDA reads it")
    keda_redis_tls: bool = setting(False, env=None, read="keda_redis", group="KEDA",
                                   doc="rediss:// in REDIS_URL, as KEDA reads it")
    keda_redis_username: str = setting("", env=None, read="keda_redis", group="KEDA",
                                       doc="the user of REDIS_URL, as KEDA reads it")
    redis_secret_name: str = setting(
        "redis-credentials", env="REDIS_SECRET_NAME", check=names.check_dns_subdomain,
        group="KEDA", doc="Secret in NAMESPACE the TriggerAuthentication reads (redis mode)")
    redis_secret_key: str = setting(
        "password", env="REDIS_SECRET_KEY", check=names.check_secret_key,
        group="KEDA", doc="the key of that Secret holding the Redis password")
    # -- the API ---------------------------------------------------------------------------
    api_keys: tuple[str, ...] = setting(
        (), env="API_KEYS", check=parse.api_keys, group="API", shown_default="none (required)",
        doc="comma-separated keys, each at least 16 characters (several: rotation)")
    auth_disabled: bool = setting(False, env="AUTH_DISABLED", group="API",
                                  doc="local development only; logs a warning at start")
    rate_limits_enabled: bool = setting(True, env="RATE_LIMITS_ENABLED", group="API",
                                        doc="per client IP and route, shared through Redis")
    rate_limits: Mapping[str, str] = setting(
        env="RATE_LIMIT_<ROUTE>", read="rate_limits", factory=lambda: dict(DEFAULT_RATE_LIMITS),
        group="API", shown_default=", ".join(f"{r}: {v}" for r, v in DEFAULT_RATE_LIMITS.items()),
        doc="one per route (CREATE, WAKE, SLEEP, STATUS, CHAT, DELETE, MESSAGES, EVENTS), in "
            "the notation of limits (100/minute)")
    trusted_proxies: int = setting(
        0, env="TRUSTED_PROXIES", minimum=0, group="API",
        doc="proxies in front whose X-Forwarded-For is trusted; 0: use the peer address")
    max_body_bytes: int = setting(64 * 1024, env="MAX_BODY_BYTES", group="API",
                                  doc="larger request bodies get 413")
    max_message_chars: int = setting(16000, env="MAX_MESSAGE_CHARS", group="API",
                                     doc="longer chat messages get 413")
    max_queued_messages: int = setting(
        100, env="MAX_QUEUED_MESSAGES", group="API",
        doc="undelivered messages per session before 429 backlog_full; must be smaller than "
            "MAX_MESSAGES_KEPT")
    max_messages_kept: int = setting(1000, env="MAX_MESSAGES_KEPT", group="API",
                                     doc="conversation entries kept per session")
    max_session_bytes: int = setting(
        2 * 1024 * 1024, env="MAX_SESSION_BYTES", group="API",
        doc="bytes one conversation keeps in Redis; the oldest settled messages make room")
    idempotency_ttl_seconds: int = setting(
        600, env="IDEMPOTENCY_TTL_SECONDS", group="API",
        doc="how long an Idempotency-Key replays its create")
    max_wait_seconds: int = setting(
        30, env="MAX_WAIT_SECONDS", minimum=0, maximum=300, group="API",
        doc="the longest a chat is held for Prefer: wait=N")
    max_event_streams: int = setting(1000, env="MAX_EVENT_STREAMS", minimum=0, group="API",
                                     doc="open /events streams per API process (429 beyond)")
    max_event_streams_per_session: int = setting(
        5, env="MAX_EVENT_STREAMS_PER_SESSION", minimum=1, maximum=100, group="API",
        doc="open /events streams per session, across replicas")
    events_heartbeat_seconds: float = setting(
        30.0, env="EVENTS_HEARTBEAT_SECONDS", minimum=0.1, maximum=300, group="API",
        doc="a heartbeat comment on idle streams (under common proxies' 60 s idle timeout)")
    event_stream_max_seconds: int = setting(
        300, env="EVENT_STREAM_MAX_SECONDS", group="API",
        doc="a stream's longest life; the client resumes with Last-Event-ID")
    max_events_kept: int = setting(1000, env="MAX_EVENTS_KEPT", minimum=10, group="API",
                                   doc="events each session's log keeps (older: gap)")
    chat_page_enabled: bool = setting(False, env="CHAT_PAGE_ENABLED", group="API",
                                      doc="serve the chat page at /ui (make run sets it)")
    # -- serving -----------------------------------------------------------------------------
    port: int = setting(8080, env="PORT", maximum=65535, group="Serving",
                        doc="where the API listens")
    bind_address: str = setting(
        "0.0.0.0", env="BIND_ADDRESS", check=parse.bind_address,  # noqa: S104 - a pod's own
        group="Serving", doc="the address the API binds")
    web_concurrency: int | None = setting(
        None, env="WEB_CONCURRENCY", maximum=64, group="Serving",
        shown_default="CPUs + 1, at most 4", doc="gunicorn worker processes (gevent)")
    web_connections: int = setting(
        2000, env="WEB_CONNECTIONS", minimum=10, group="Serving",
        doc="requests one API process holds at once (open event streams included)")
    max_forwards: int = setting(
        200, env="MAX_FORWARDS", minimum=0, group="Serving",
        doc="chats per API process waiting on a pod; past it a chat is queued (202) for the "
            "worker; MAX_FORWARDS + MAX_EVENT_STREAMS must be smaller than WEB_CONNECTIONS")
    log_level: str = setting("INFO", env="LOG_LEVEL", group="Serving",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                             doc="JSON logs, one object per line")
    warm_pool_size: int = setting(
        0, env="WARM_POOL_SIZE", minimum=0, maximum=100, group="Worker",
        doc="sessions kept created ahead of their users, their pods up, so a create is "
            "answered by a running pod (each costs a pod always running); 0: off")
    warm_pool_max_age_seconds: int = setting(
        3600, env="WARM_POOL_MAX_AGE_SECONDS", minimum=60, group="Worker",
        doc="a pooled session older than this is replaced by a new one")
    # -- the worker --------------------------------------------------------------------------
    delivery_max_attempts: int = setting(
        5, env="DELIVERY_MAX_ATTEMPTS", group="Worker",
        doc="attempts before a message is failed (also counted when it is claimed)")
    delivery_backoff_seconds: float = setting(
        1.0, env="DELIVERY_BACKOFF_SECONDS", minimum=0, group="Worker",
        doc="first retry delay, doubled per attempt (at most 60 s)")
    delivery_lease_seconds: int = setting(
        60, env="DELIVERY_LEASE_SECONDS", group="Worker",
        doc="per-session delivery lease; must exceed POD_TIMEOUT_SECONDS")
    delivery_concurrency: int = setting(
        32, env="DELIVERY_CONCURRENCY", maximum=1024, group="Worker",
        doc="sessions one worker delivers to at once (a thread each)")
    reconcile_interval_seconds: int = setting(30, env="RECONCILE_INTERVAL_SECONDS",
                                              group="Worker", doc="the reconciler's period")
    reconcile_grace_seconds: int = setting(
        300, env="RECONCILE_GRACE_SECONDS", minimum=0, group="Worker",
        doc="age before a bundle with no record is swept")
    bundle_concurrency: int = setting(
        4, env="BUNDLE_CONCURRENCY", maximum=64, group="Worker",
        doc="bundles the archiver sweeps, the worker restores and reapply applies at once")
    worker_poll_interval_seconds: float = setting(
        0.5, env="WORKER_POLL_INTERVAL_SECONDS", minimum=0.01, group="Worker",
        doc="how often a worker looks for due messages")
    worker_health_port: int = setting(8081, env="WORKER_HEALTH_PORT", minimum=0,
                                      maximum=65535, group="Worker",
                                      doc="the worker's /healthz (0: any free port)")

    @property
    def activity_ttl_seconds(self) -> int:
        """TTL of the key KEDA reads as "recently active".

        KEDA scales to 0 `cooldownPeriod` after the last active poll, so the key must vanish
        that much earlier for the pod to sleep IDLE_TIMEOUT after the last activity.
        """
        return max(1, self.idle_timeout_seconds - self.keda_cooldown_period_seconds)

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
