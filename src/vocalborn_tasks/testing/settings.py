"""Settings for tests: from defaults and explicit values only.

``TaskSettings()`` reads the environment and a ``.env`` file, which is right for a service and
wrong for a test: a developer's ``REDIS_URL`` or ``RECORDING_RESOLVER`` would change what the
tests do. :func:`isolated_settings` builds the same validated settings from its arguments alone.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..config import TaskSettings

__all__ = ["isolated_settings"]


class _IsolatedSettings(TaskSettings):
    """TaskSettings whose only source is the constructor."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def isolated_settings(**values: Any) -> TaskSettings:
    """:class:`TaskSettings` from ``values`` and the defaults, ignoring environment and ``.env``.

    Raises:
        pydantic.ValidationError: the values do not give valid settings.
    """
    return _IsolatedSettings(**values)
