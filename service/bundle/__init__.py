"""A session's bundle, rendered from the templates: pure — no cluster, no Redis. The objects
(labels, names and apply order stamped by code), the kinds and the version the templates make,
and the validation `python -m service validate` runs."""

from service.bundle.rendering import (
    MAX_NAME_LENGTH,
    MAX_SCALED_OBJECT_NAME_LENGTH,
    Bundle,
    KindRef,
    bundle_labels,
    check_scaler_mode,
    label_selector,
    render,
    template_context,
    template_files,
    to_yaml,
    wave_of,
)
from service.bundle.templates import (
    SAMPLE_ID,
    KedaKeys,
    TemplateVersion,
    check_templates,
    sample,
    template_kinds,
)

__all__ = ["MAX_NAME_LENGTH", "MAX_SCALED_OBJECT_NAME_LENGTH", "SAMPLE_ID", "Bundle", "KedaKeys",
           "KindRef", "TemplateVersion", "bundle_labels", "check_scaler_mode",
           "check_templates", "label_selector", "render", "sample", "template_context",
           "template_files", "template_kinds", "to_yaml", "wave_of"]
