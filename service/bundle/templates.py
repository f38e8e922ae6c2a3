"""What the templates make, whatever the session: the kinds a sweep must cover, the version
a bundle is on, and the start-up check that they render.

Kinds and version do not depend on the session (templates see only its id and names derived
from it), so a bundle rendered for a sample id stands for every session's. `keda_keys` names
the Redis keys a session's ScaledObject may read (the store knows key names; this package
only renders them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.bundle.rendering import Bundle, KindRef, check_scaler_mode, render, template_files
from service.core.config import Settings

KedaKeys = Callable[[str], dict[str, str]]

SAMPLE_ID = "s" + "a" * 16


def sample(settings: Settings, keda_keys: KedaKeys) -> Bundle:
    return render(SAMPLE_ID, settings, keda_keys(SAMPLE_ID))


def template_kinds(settings: Settings, keda_keys: KedaKeys) -> list[KindRef]:
    """Every kind the templates produce."""
    return sample(settings, keda_keys).kinds()


def check_templates(settings: Settings, keda_keys: KedaKeys) -> None:
    """At start: the templates render, and their KEDA triggers match KEDA_SCALER."""
    check_scaler_mode(sample(settings, keda_keys), settings)


class TemplateVersion:
    """The version of the templates now: the digest of the sample bundle, rendered again only
    when a template file changes (templates mounted from a ConfigMap change under a running
    process; a change of settings means a new process)."""

    # Every chat asks for the version: the files are looked at no more often than this.
    CHECK_EVERY_SECONDS = 1.0

    def __init__(self, settings: Settings, keda_keys: KedaKeys) -> None:
        self.settings = settings
        self.keda_keys = keda_keys
        self._lock = threading.Lock()
        self._files: tuple = ()
        self._version = ""
        self._checked_at = float("-inf")

    def current(self) -> str:
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at < self.CHECK_EVERY_SECONDS:
                return self._version
            files = tuple((path.name, stat.st_mtime_ns, stat.st_size)
                          for path in template_files(self.settings.templates_dir)
                          for stat in (path.stat(),))
            if files != self._files:
                self._version = sample(self.settings, self.keda_keys).digest()
                self._files = files
            self._checked_at = now
            return self._version
