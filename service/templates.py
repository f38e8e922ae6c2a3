"""What the templates make, whatever the session: the kinds a sweep must cover, the version
a bundle is on, and the start-up check that they render.

Kinds and version do not depend on the session (templates see only its id and names derived
from it), so a bundle rendered for a sample id stands for every session's.
"""

from __future__ import annotations

import threading
import time

from . import bundle
from .config import Settings
from .store import Store, keda_keys

SAMPLE_ID = "s" + "a" * 16


def sample(settings: Settings) -> bundle.Bundle:
    return bundle.render(SAMPLE_ID, settings, keda_keys(SAMPLE_ID))


def template_kinds(settings: Settings) -> list[bundle.KindRef]:
    """Every kind the templates produce."""
    return sample(settings).kinds()


def sweep_kinds(settings: Settings, store: Store) -> list[bundle.KindRef]:
    """What a sweep must cover: the kinds the templates make now and every kind a bundle was
    ever applied with (a kind since removed from the templates is still swept from the
    sessions created with it)."""
    applied = [bundle.KindRef(api, kind) for api, kind in store.applied_kinds()]
    return list(dict.fromkeys([*template_kinds(settings), *applied]))


def check_templates(settings: Settings) -> None:
    """At start: the templates render, and their KEDA triggers match KEDA_SCALER."""
    bundle.check_scaler_mode(sample(settings), settings)


class TemplateVersion:
    """The version of the templates now: the digest of the sample bundle, rendered again only
    when a template file changes (templates mounted from a ConfigMap change under a running
    process; a change of settings means a new process)."""

    # Every chat asks for the version: the files are looked at no more often than this.
    CHECK_EVERY_SECONDS = 1.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
                          for path in bundle.template_files(self.settings.templates_dir)
                          for stat in (path.stat(),))
            if files != self._files:
                self._version = sample(self.settings).digest()
                self._files = files
            self._checked_at = now
            return self._version
