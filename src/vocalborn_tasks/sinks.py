"""Result sinks: the host's hook that stores a finished analysis (e.g. in PostgreSQL).

The worker calls the sink after an analysis succeeds and before the task's result is stored.
It records each acknowledged delivery in Redis, so a task body that runs twice (a redelivery
after a worker died) never calls the sink again for a result it already accepted. A sink that
raises is retried like any retryable error; the sink must therefore be idempotent per
``task_id`` itself only for the narrow window between its own commit and our marker write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .models import AnalysisResult

__all__ = ["CallableSink", "ResultSink", "as_result_sink"]


@runtime_checkable
class ResultSink(Protocol):
    """Stores one analysis result. Returning normally acknowledges it."""

    def store(self, task_id: str, result: AnalysisResult) -> None:
        """Persist ``result`` for ``task_id``; raise to have the task retry."""
        ...


class CallableSink:
    """Adapts a plain function ``fn(task_id, result)`` to :class:`ResultSink`."""

    def __init__(self, fn: Callable[[str, AnalysisResult], object]) -> None:
        self._fn = fn

    def store(self, task_id: str, result: AnalysisResult) -> None:
        self._fn(task_id, result)


def as_result_sink(obj: object) -> ResultSink:
    """Accept a ResultSink or any ``(task_id, result)`` callable.

    Raises:
        TypeError: ``obj`` is neither.
    """
    if isinstance(obj, ResultSink):
        return obj
    if callable(obj):
        return CallableSink(obj)
    raise TypeError(f"{type(obj).__name__} is not a ResultSink nor a callable")
