"""The typed surface of :class:`~vocalborn_tasks.TaskManager`, as a Protocol.

Code that only submits, reads, follows, awaits and cancels tasks (a web router, a host's
service layer) should depend on :class:`TaskManagerProtocol`, not on the concrete class: then
the in-memory :class:`~vocalborn_tasks.testing.FakeTaskManager` (or a host's own double) can
stand in for it in tests, and mypy checks that both keep the same signatures. The contract
suite (``tests/integration/test_manager_contract.py``) checks that they also keep the same
behaviour.

Importing this module imports neither Celery nor Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, Self, TypeVar, overload

from pydantic import JsonValue

if TYPE_CHECKING:
    from .models import AnalysisRequest, AnalysisResult, Submission, TaskStatus
    from .tasks.definition import TaskDefinition, TaskHandle

__all__ = ["TaskManagerProtocol"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskManagerProtocol(Protocol):
    """What a host calls on a task manager; :class:`~vocalborn_tasks.TaskManager` satisfies it.

    Every method behaves as documented on :class:`~vocalborn_tasks.TaskManager`; the errors
    are the library's own (:mod:`vocalborn_tasks.errors`). ``owner=`` scopes a call to one
    user: their analyses are de-duplicated among themselves only, and another owner's task
    reads as an unknown id (see :class:`~vocalborn_tasks.TaskManager`).
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release every resource; the manager refuses use afterwards."""
        ...

    async def ping(self) -> float:
        """Round-trip time to the broker in milliseconds."""
        ...

    async def submit_audio_analysis(
        self,
        request: AnalysisRequest | None = None,
        /,
        *,
        practice_record_id: str | None = None,
        recording: str | None = None,
        reference: str | None = None,
        language: str | None = None,
        analysis_params: dict[str, JsonValue] | None = None,
        force: bool = False,
        owner: str | None = None,
    ) -> str:
        """Queue one analysis; the id of one already in flight for the record, unless ``force``."""
        ...

    async def submit_batch(
        self,
        requests: Iterable[AnalysisRequest],
        *,
        force: bool = False,
        owner: str | None = None,
    ) -> list[str]:
        """Queue many analyses, all validated first."""
        ...

    async def submit_analyses(
        self,
        requests: Iterable[AnalysisRequest],
        *,
        force: bool = False,
        owner: str | None = None,
    ) -> list[Submission]:
        """Queue many analyses, telling for each whether it was a duplicate of one in flight."""
        ...

    async def submit(
        self, definition: TaskDefinition[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]:
        """Queue any task definition with type-checked arguments."""
        ...

    async def get_task_status(
        self, task: str | TaskHandle[Any], *, owner: str | None = None
    ) -> TaskStatus:
        """The task's current status (``NOT_FOUND``/``EXPIRED``/``LOST`` where it applies)."""
        ...

    async def get_statuses(
        self, tasks: Iterable[str | TaskHandle[Any]], *, owner: str | None = None
    ) -> list[TaskStatus]:
        """Statuses of many tasks."""
        ...

    def watch(
        self,
        task: str | TaskHandle[Any],
        *,
        after: str | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[TaskStatus]:
        """The status now and at each change, ending at a final state."""
        ...

    @overload
    async def wait_for_result(
        self, task: TaskHandle[R], *, timeout: float | None = None, owner: str | None = None
    ) -> R: ...

    @overload
    async def wait_for_result(
        self, task: str, *, timeout: float | None = None, owner: str | None = None
    ) -> AnalysisResult: ...

    async def wait_for_result(
        self,
        task: str | TaskHandle[Any],
        *,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> Any:
        """Wait for the typed result; raises the library's task errors otherwise."""
        ...

    async def cancel(
        self, task: str | TaskHandle[Any], *, terminate: bool = True, owner: str | None = None
    ) -> TaskStatus:
        """Cancel the task and return its status afterwards."""
        ...
