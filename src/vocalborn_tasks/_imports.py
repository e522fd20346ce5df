"""Loading host extension points (resolver, sink, analyzer...) from ``package.module:attr``."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigurationError

__all__ = ["load_object"]


def load_object(spec: str, what: str) -> Any:
    """Import ``package.module:attr`` (dots after the colon walk attributes).

    A class is instantiated with no arguments; anything else (an instance, a function) is
    returned as is, so a plain function can serve as a callable extension point.

    Raises:
        ConfigurationError: the spec is malformed, the module or attribute is missing, or the
            factory failed. The message names ``what`` and the spec, never a secret.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigurationError(f"{what}: {spec!r} is not of the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{what}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigurationError(
                f"{what}: {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigurationError(f"{what}: calling {spec!r} failed: {exc}") from exc
    return obj
