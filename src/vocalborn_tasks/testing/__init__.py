"""What a host application's own tests use: a fake manager, a real worker, pytest fixtures.

Three ways to test a host, fastest first (``docs/testing.md`` shows each):

- :class:`FakeTaskManager`: the manager's typed protocol in memory; tasks run inline (the real
  analysis engine in a thread) and the test can hold, drive, fail or expire them. Milliseconds.
- The pytest fixtures of :mod:`vocalborn_tasks.testing.plugin` (loaded automatically):
  ``vocalborn_server`` (an embedded Valkey), ``vocalborn_settings``, ``vocalborn_worker`` (a
  real worker process with the host's task modules) and ``task_manager``. Seconds.
- :func:`vocalborn_tasks.testing.web.service_client`: the host's FastAPI app with the fake
  behind its routes (needs ``fastapi`` and ``httpx``; import it from its module).

Celery's eager mode (``task_always_eager``) does not apply: the manager publishes through its
own scripts, never through ``apply_async``, so the setting is never consulted. Use the fake
manager where eager mode would have been used.

Importing this package imports neither Celery nor pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..facade import TaskManagerProtocol

if TYPE_CHECKING:
    from .fake import FakeTaskManager, SubmittedTask
    from .settings import isolated_settings
    from .worker import WorkerProcess, settings_environment

__all__ = [
    "FakeTaskManager",
    "SubmittedTask",
    "TaskManagerProtocol",
    "WorkerProcess",
    "isolated_settings",
    "settings_environment",
]

_LAZY = {
    "FakeTaskManager": "fake",
    "SubmittedTask": "fake",
    "WorkerProcess": "worker",
    "settings_environment": "worker",
    "isolated_settings": "settings",
}


def __getattr__(name: str) -> Any:
    """Import each part on first use: the pytest plugin loads this package in every session."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
