"""Settings: each defined once (`settings`: field, variable, default, bounds, one line of
documentation), read from the environment (`environment`) and documented (`reference`) from
those definitions; the parsers of single values (`parse`)."""

from service.core.config.environment import from_env, read_settings
from service.core.config.parse import ConfigError
from service.core.config.settings import (
    DEFAULT_RATE_LIMITS,
    RATE_LIMITED_ROUTES,
    REPO_ROOT,
    SCALER_MODES,
    TEMPLATES_OF_MODE,
    Definition,
    Settings,
    definitions,
)

__all__ = ["DEFAULT_RATE_LIMITS", "RATE_LIMITED_ROUTES", "REPO_ROOT", "SCALER_MODES",
           "TEMPLATES_OF_MODE", "ConfigError", "Definition", "Settings", "definitions",
           "from_env", "read_settings"]
