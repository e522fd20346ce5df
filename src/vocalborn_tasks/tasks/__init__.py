"""Task definitions and their registration on a Celery app.

Definitions are typed data (:class:`TaskDefinition`); :func:`register_task` turns one into a
Celery task on a given app, so nothing here creates or needs an app at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .builtin import (
    BUILTIN_DEFINITIONS,
    CleanupReport,
    EchoResult,
    HealthPing,
    analyze_audio,
    cleanup,
    echo,
    health_check,
)
from .definition import TaskContext, TaskDefinition, TaskHandle, task_definition
from .runtime import WorkerRuntime, register_task, runtime_for

if TYPE_CHECKING:
    from ..app import VocalbornCelery

__all__ = [
    "BUILTIN_DEFINITIONS",
    "CleanupReport",
    "EchoResult",
    "HealthPing",
    "TaskContext",
    "TaskDefinition",
    "TaskHandle",
    "WorkerRuntime",
    "analyze_audio",
    "cleanup",
    "echo",
    "health_check",
    "register_builtin_tasks",
    "register_task",
    "runtime_for",
    "task_definition",
]


def register_builtin_tasks(app: VocalbornCelery) -> None:
    """Register the analysis, maintenance, health and test tasks on ``app``."""
    for definition in BUILTIN_DEFINITIONS:
        register_task(app, definition)
