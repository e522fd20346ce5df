"""Result sinks: the host's hook that stores a finished analysis (e.g. in PostgreSQL).

The contract (docs/reliability.md, "Writing a RESULT_SINK"):

- **When**: after an analysis succeeds, before its result is stored; the caller sees SUCCESS
  only once the sink has returned.
- **How often**: at least once; more than once only in one window (a worker killed after the
  sink committed and before the worker recorded that, one round trip): make ``store`` an
  upsert keyed on ``task_id``.
- **If it raises**: a retryable error (``OSError``, a Redis/connection error,
  :class:`~vocalborn_tasks.errors.RetryableTaskError`) retries the task with backoff (the
  analysis runs again, then the sink); anything else fails the task (code ``internal``,
  cause ``system``).
- **A broker error after the sink committed**: the worker waits it out (up to
  ``BROKER_OUTAGE_TOLERANCE``) before recording the acknowledgement; the sink is not called
  again. Beyond the tolerance the task fails with ``broker_unavailable`` although the sink
  holds the result: the host's table is then ahead of the task state.
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
        """Persist ``result`` for ``task_id`` (an upsert: it may be called twice).

        Raise a retryable error to have the task retried; any other error fails it.
        """
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
