"""Settings: the one place that reads the environment (`environment`), the defaults and
cross-field rules (`settings`), and the parsers of single values (`parse`)."""

from .parse import ConfigError
from .settings import (
    DEFAULT_RATE_LIMITS,
    RATE_LIMITED_ROUTES,
    REPO_ROOT,
    SCALER_MODES,
    TEMPLATES_OF_MODE,
    Settings,
)

__all__ = ["DEFAULT_RATE_LIMITS", "RATE_LIMITED_ROUTES", "REPO_ROOT", "SCALER_MODES",
           "TEMPLATES_OF_MODE", "ConfigError", "Settings"]
