"""Parsing one environment variable: the reader `Settings.from_env` uses and the checks of
values that are more than a number (URLs, directories, keys, rate limits, templates).

Each check raises ValueError with a message; the reader turns it into ConfigError naming the
variable."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from limits import parse as parse_rate_limit

from service.core import names

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def number(
        self,
        name: str,
        default: T,
        kind: Callable[[str], T] = int,  # type: ignore[assignment]
        *,
        minimum: float = 1,
        maximum: float | None = None,
    ) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise ConfigError(f"{name}={raw!r} must be {bounds}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")

    def choice(self, name: str, default: str, allowed: tuple[str, ...], *,
               upper: bool = True) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
        return value

    def checked(self, name: str, default: T, check: Callable[[str], T | None]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            result = check(raw)
        except ValueError as err:
            # Never echo API_KEYS back: it is a secret.
            shown = "<hidden>" if name == "API_KEYS" else repr(raw)
            raise ConfigError(f"{name}={shown}: {err}") from None
        return raw if result is None else result  # type: ignore[return-value]


def redis_url(env: Mapping[str, str]) -> str:
    if env.get("REDIS_URL", "").strip():
        url = env["REDIS_URL"].strip()
        if not re.match(r"^(redis|rediss|unix)://", url):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
        return url
    host = env.get("REDIS_HOST", "").strip() or "127.0.0.1"
    port = env.get("REDIS_PORT", "").strip() or "6379"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_PORT={port!r} is not a port number")
    password = env.get("REDIS_PASSWORD", "")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"


def existing_dir(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise ValueError("not a directory")
    return path


def tls_dir(raw: str) -> Path:
    path = existing_dir(raw)
    missing = [f for f in ("tls.crt", "tls.key", "ca.crt") if not (path / f).is_file()]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return path


def host_and_port(raw: str) -> None:
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    names.check_hostname(host)


def api_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    if any(len(key) < 16 for key in keys):
        raise ValueError("every key must be at least 16 characters")
    return keys


def rate_limit(raw: str) -> None:
    try:
        parse_rate_limit(raw)
    except ValueError:
        raise ValueError("not a rate limit such as '100/minute'") from None


def pod_url_template(raw: str) -> None:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        raw.format(name="n", namespace="ns", session_id="s", port=1, pod_ip="10.0.0.1")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            "placeholders may be {name}, {namespace}, {session_id}, {port}, {pod_ip} "
            f"({err})"
        ) from None


def bind_address(raw: str) -> None:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        names.check_hostname(raw)


def kind_names(raw: str) -> tuple[str, ...]:
    """Comma-separated Kubernetes kind names (PersistentVolumeClaim, ConfigMap...)."""
    kinds = tuple(kind.strip() for kind in raw.split(",") if kind.strip())
    for kind in kinds:
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]{0,62}", kind):
            raise ValueError(f"{kind!r} is not a kind name")
    return kinds
