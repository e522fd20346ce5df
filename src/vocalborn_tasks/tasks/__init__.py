"""Task definitions and their registration on a Celery app.

Definitions are typed data (:class:`TaskDefinition`): the caller imports them to submit (name,
queue, argument and result types) without Celery. :func:`register_task` (worker side, imported
on first use) turns one into a Celery task on a given app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ..worker.runtime import (
        WorkerRuntime,
        register_builtin_tasks,
        register_task,
        runtime_for,
    )

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


_WORKER_SIDE = frozenset(
    {"WorkerRuntime", "register_builtin_tasks", "register_task", "runtime_for"}
)


def __getattr__(name: str) -> Any:
    """Worker-side names, imported on first use so that importing definitions needs no Celery."""
    if name in _WORKER_SIDE:
        from ..worker import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
