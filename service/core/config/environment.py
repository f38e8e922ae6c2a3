"""Reading the settings from the environment, made from their definitions (`settings`): each
variable parsed and checked once, at start. A bad value raises ConfigError naming the
variable, so the process refuses to start instead of failing on the first request."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from service.core import names
from service.core.config import parse
from service.core.config.parse import ConfigError
from service.core.config.settings import (
    DEFAULT_RATE_LIMITS,
    TEMPLATES_OF_MODE,
    Definition,
    Settings,
    definitions,
)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings read from the environment (os.environ unless given), checked."""
    settings = Settings(**read_settings(os.environ if environ is None else environ))
    settings.check()
    return settings


def read_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's value from env, parsed and checked alone (Settings.check then checks
    them together)."""
    read = parse.Reader(env)
    values: dict[str, Any] = {}
    for field, definition in definitions():
        if definition.read is not None:
            values.update(_SPECIAL[definition.read](read, env, field.name))
        else:
            values[field.name] = _read_one(read, field.type, field.default, definition)
    return values


def _read_one(read: parse.Reader, kind: Any, default: Any, definition: Definition) -> Any:
    name = definition.env
    assert name is not None, definition
    if definition.choices:
        upper = all(choice.isupper() for choice in definition.choices)
        return read.choice(name, default, definition.choices, upper=upper)
    if definition.check is not None:
        return read.checked(name, default, definition.check)
    if kind in ("bool", bool):
        return read.flag(name, default)
    if kind in ("float", float):
        return read.number(name, default, float, minimum=_low(definition),
                           maximum=definition.maximum)
    if kind in ("int", int, "int | None"):
        return read.number(name, default, minimum=_low(definition), maximum=definition.maximum)
    raise TypeError(f"no reader for {name} ({kind})")


def _low(definition: Definition) -> float:
    return 1 if definition.minimum is None else definition.minimum


def _redis_url(read: parse.Reader, env: Mapping[str, str], field: str) -> dict[str, Any]:
    return {field: parse.redis_url(env)}


def _templates_dir(read: parse.Reader, env: Mapping[str, str], field: str) -> dict[str, Any]:
    mode = env.get("KEDA_SCALER", "").strip().lower()
    default = TEMPLATES_OF_MODE.get(mode, TEMPLATES_OF_MODE["push"])
    return {field: read.checked("TEMPLATES_DIR", default, parse.existing_dir)}


def _rate_limits(read: parse.Reader, env: Mapping[str, str], field: str) -> dict[str, Any]:
    return {field: {route: read.checked(f"RATE_LIMIT_{route.upper()}", default, parse.rate_limit)
                    for route, default in DEFAULT_RATE_LIMITS.items()}}


def _keda_redis(read: parse.Reader, env: Mapping[str, str], field: str) -> dict[str, Any]:
    """KEDA's view of REDIS_URL (database, TLS and user always come from it; only the address
    may be overridden, where KEDA's network sees Redis elsewhere). Read once, for the first
    of its fields."""
    if field != "keda_redis_host":
        return {}
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


_SPECIAL = {"redis_url": _redis_url, "templates_dir": _templates_dir,
            "rate_limits": _rate_limits, "keda_redis": _keda_redis}
