"""Typed task definitions: a plain function plus its name and queue, registered on an app later.

A definition is data, not a Celery task: it holds no app and opens no connection, so it can
live at module level and be imported by both the host (to submit) and the worker (to run).
The function's first parameter is a :class:`TaskContext`; the rest are its arguments, which
travel as JSON and are validated by pydantic on the worker. The return annotation tells the
manager how to turn the stored JSON back into a typed value.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, get_type_hints

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

if TYPE_CHECKING:
    from ..worker.runtime import WorkerRuntime

__all__ = ["TaskContext", "TaskDefinition", "TaskHandle", "task_definition"]

P = ParamSpec("P")
R = TypeVar("R")

ProgressReporter = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task knows about itself, and its one way to publish progress.

    Attributes:
        task_id: the Celery task id (the same the caller holds).
        retries: how many times this task has been retried after a retryable error.
        delivery: how many times this message has been delivered (1 on the first run).
        runtime: the worker's per-process resources (settings, Redis, analyzer, resolver,
            sink); None when the function is called directly, outside a worker.
    """

    task_id: str
    retries: int = 0
    delivery: int = 1
    runtime: WorkerRuntime | None = field(default=None, repr=False)
    _report: ProgressReporter | None = field(default=None, repr=False)

    def report_progress(self, step: str, percent: float) -> None:
        """Publish ``step`` and ``percent`` (0-100) as the task's PROGRESS state.

        Callers see it through ``TaskManager.watch`` and ``get_task_status``. Cheap enough to
        call at each stage; not meant for every loop iteration. Reports are stored at most every
        ``PROGRESS_MIN_INTERVAL`` seconds (0.25 s by default, counted from the task's start):
        a report in between is dropped, since the next one (or the result) supersedes it.
        """
        if self._report is not None:
            self._report(step, max(0.0, min(100.0, float(percent))))


@dataclass(frozen=True, slots=True)
class TaskHandle(Generic[R]):
    """A submitted task's id, remembering which definition (and so which result type) it has.

    ``TaskManager.submit`` returns one. An application that stored only the id (in its
    database, a URL) gets a typed handle back with :meth:`from_id`; a plain id string passed to
    ``wait_for_result`` is taken to be an audio analysis.
    """

    id: str
    definition: TaskDefinition[..., R]

    def __str__(self) -> str:
        return self.id

    @classmethod
    def from_id(cls, definition: TaskDefinition[..., R], task_id: str) -> TaskHandle[R]:
        """The handle of an already submitted task of ``definition``, from its stored id.

        ``await manager.wait_for_result(TaskHandle.from_id(count_words, stored_id))`` returns
        ``count_words``'s declared type, where the plain id would be decoded as an
        :class:`~vocalborn_tasks.AnalysisResult` and fail with ``bad_result``. Nothing is
        checked against the server: the caller vouches that the id is a task of ``definition``.

        Raises:
            ValueError: ``task_id`` is empty or not a string.
        """
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"a task id is a non-empty string, not {task_id!r}")
        return cls(task_id, definition)


class TaskDefinition(Generic[P, R]):
    """A typed task: ``fn(ctx, *args) -> R`` with a Celery name and queue.

    Use :func:`task_definition` to make one, :func:`vocalborn_tasks.tasks.register_task` to put
    it on an app, and ``TaskManager.submit`` to run it.
    """

    def __init__(
        self,
        fn: Callable[Concatenate[TaskContext, P], R],
        *,
        name: str,
        queue: str,
        retryable: bool = True,
    ) -> None:
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retryable = retryable
        self._signature = inspect.signature(fn)
        params = list(self._signature.parameters.values())
        if not params:
            raise TypeError(f"task {name!r}: the first parameter must be the TaskContext")
        self._arg_signature = self._signature.replace(parameters=params[1:])
        hints = get_type_hints(fn)
        self.result_type: Any = hints.get("return", Any)
        self._result_adapter: TypeAdapter[Any] = TypeAdapter(self.result_type)
        # One adapter per argument (the context is not validated: the worker builds it).
        self._arg_adapters: dict[str, TypeAdapter[Any]] = {
            p.name: TypeAdapter(hints.get(p.name, Any)) for p in params[1:]
        }

    def __repr__(self) -> str:
        return f"TaskDefinition(name={self.name!r}, queue={self.queue!r})"

    def __call__(self, ctx: TaskContext, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function directly (tests, or a host that wants no queue)."""
        return self.fn(ctx, *args, **kwargs)

    def encode_arguments(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Bind arguments to the signature and turn them into JSON-safe keyword arguments.

        Raises:
            TypeError: the arguments do not fit the signature.
        """
        bound = self._arg_signature.bind(*args, **kwargs)
        return {k: to_jsonable_python(v) for k, v in bound.arguments.items()}

    def run_json(self, ctx: TaskContext, kwargs: dict[str, Any]) -> Any:
        """Worker side: validate JSON arguments with pydantic, run, return a JSON-safe value."""
        try:
            bound = self._arg_signature.bind(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        validated = {
            name: self._arg_adapters[name].validate_python(value)
            for name, value in bound.arguments.items()
        }
        value = self.fn(ctx, **validated)  # type: ignore[call-arg]
        return to_jsonable_python(value)

    def decode_result(self, value: Any) -> R:
        """Caller side: validate a stored JSON result back into the declared return type."""
        result: R = self._result_adapter.validate_python(value)
        return result


def task_definition(
    *, name: str, queue: str = "ai_analysis", retryable: bool = True
) -> Callable[[Callable[Concatenate[TaskContext, P], R]], TaskDefinition[P, R]]:
    """Decorate ``fn(ctx: TaskContext, ...) -> R`` to make a :class:`TaskDefinition`.

    Args:
        name: the Celery task name (unique across the app).
        queue: the queue it is sent to.
        retryable: whether retryable errors (I/O, broker hiccups) are retried with backoff.
    """

    def wrap(fn: Callable[Concatenate[TaskContext, P], R]) -> TaskDefinition[P, R]:
        return TaskDefinition(fn, name=name, queue=queue, retryable=retryable)

    return wrap
