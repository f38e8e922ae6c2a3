"""Reading the settings from the environment: each variable parsed and checked once, at
start. A bad value raises ConfigError naming the variable, so the process refuses to start
instead of failing on the first request."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from .. import names
from . import parse
from .parse import ConfigError
from .settings import DEFAULT_RATE_LIMITS, SCALER_MODES, TEMPLATES_OF_MODE, Settings


def read_settings(env: Mapping[str, str]) -> dict[str, object]:
    """Every setting's value from env, parsed and checked alone (Settings.check then checks
    them together)."""
    read = parse.Reader(env)
    defaults = Settings()
    return dict(
        redis_url=parse.redis_url(env),
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
            parse.existing_dir),
        log_level=read.choice(
            "LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
        ),
        api_keys=read.checked("API_KEYS", (), parse.api_keys),
        auth_disabled=read.flag("AUTH_DISABLED", False),
        rate_limits_enabled=read.flag("RATE_LIMITS_ENABLED", True),
        rate_limits={
            route: read.checked(f"RATE_LIMIT_{route.upper()}", default, parse.rate_limit)
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
                                    parse.host_and_port),
        # 0: any free port (tests running several workers on one machine).
        scaler_port=read.number("SCALER_PORT", defaults.scaler_port, minimum=0,
                                maximum=65535),
        scaler_tls_dir=read.checked("SCALER_TLS_DIR", None, parse.tls_dir),
        scaler_secret_name=read.checked(
            "SCALER_SECRET_NAME", defaults.scaler_secret_name, names.check_dns_subdomain
        ),
        worker_health_port=read.number(
            "WORKER_HEALTH_PORT", defaults.worker_health_port, minimum=0, maximum=65535
        ),
        pod_url_template=read.checked(
            "POD_URL_TEMPLATE", defaults.pod_url_template, parse.pod_url_template
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
        failed_session_grace_seconds=read.number(
            "FAILED_SESSION_GRACE_SECONDS", defaults.failed_session_grace_seconds, minimum=1),
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
                                  parse.bind_address),
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


def _keda_redis(read: parse.Reader, env: Mapping[str, str]) -> dict[str, object]:
    url = urlsplit(parse.redis_url(env))
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
