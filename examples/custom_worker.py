"""A worker module that runs the built-in tasks plus the host's own ``examples.word_count``.

Start it from the repository root (the same way for any host package)::

    REMAP_SIGTERM=SIGQUIT REDIS_URL=redis://127.0.0.1:6379 \\
        celery -A examples.custom_worker worker --queues ai_analysis,maintenance,health

(``REMAP_SIGTERM=SIGQUIT`` makes SIGTERM a quick shutdown that hands running tasks back to the
queue instead of waiting for them; ``vocalborn-tasks worker`` sets it for you.)

``celery -A`` looks for a module attribute named ``app``. It is built on first access from the
environment, so importing this module (in tests, in the web app) connects to nothing.
"""

from __future__ import annotations

from typing import Any

from vocalborn_tasks import TaskSettings, create_celery_app, register_task

from .custom_tasks import word_count


def create_app(settings: TaskSettings | None = None) -> Any:
    """The library's Celery app (queues, reliability defaults, built-in tasks) plus our task."""
    app = create_celery_app(settings if settings is not None else TaskSettings())
    register_task(app, word_count)
    return app


_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
