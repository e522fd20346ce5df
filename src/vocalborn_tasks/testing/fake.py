"""An in-memory task manager for a host's tests: no server, tasks run inline, the test drives.

:class:`FakeTaskManager` implements :class:`~vocalborn_tasks.facade.TaskManagerProtocol`, the
surface the FastAPI router and a host's own code depend on, with the same validation, the same
states, the same errors and the same typed results as :class:`~vocalborn_tasks.TaskManager`.
The contract suite (``tests/integration/test_manager_contract.py``) runs one set of tests
against both, so the fake cannot drift from the real thing.

What it does instead of Redis and a worker:

- a submitted task runs at once, in a thread of this process: the real analysis engine for
  ``submit_audio_analysis`` and the host's own task function (arguments validated by pydantic,
  exactly as a worker does) for ``submit``;
- :meth:`FakeTaskManager.hold` keeps new tasks PENDING, so a test can look at a queued task, then
  drive it by hand (:meth:`~FakeTaskManager.start`, :meth:`~FakeTaskManager.progress`,
  :meth:`~FakeTaskManager.finish`, :meth:`~FakeTaskManager.fail`,
  :meth:`~FakeTaskManager.expire`) or run it for real (:meth:`~FakeTaskManager.run`);
- :meth:`FakeTaskManager.broker_outage` makes every call that needs Redis raise
  :class:`~vocalborn_tasks.errors.BrokerUnavailableError`, as an unreachable server does.

What it does not do: retries with backoff (a retryable error fails the task at once), time
limits, the delivery cap, the result sink, and ``TaskContext.runtime`` (None, as when a
definition is called directly): a task body that needs the worker runtime needs a worker
(the ``vocalborn_worker`` fixture). All of its methods must be called from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

import anyio
from pydantic import JsonValue, ValidationError
from pydantic_core import to_jsonable_python

from ..config import TaskSettings
from ..errors import (
    BrokerUnavailableError,
    InvalidRequestError,
    ManagerClosedError,
    TaskNotFoundError,
    TaskRevokedError,
    TaskTimeoutError,
    VocalbornTasksError,
)
from ..models import (
    AnalysisRequest,
    AnalysisResult,
    Submission,
    TaskErrorInfo,
    TaskState,
    TaskStatus,
    parse_cursor,
)
from ..outcomes import build_request, prepare_requests, result_of, scope_owner
from ..record import new_task_id
from ..recordings import (
    RecordingResolver,
    check_recording_location,
    load_resolver,
    local_path,
)
from ..tasks.builtin import analyze_audio
from ..tasks.definition import TaskContext, TaskDefinition, TaskHandle

if TYPE_CHECKING:
    from ..analysis import Analyzer

__all__ = ["FakeTaskManager", "SubmittedTask"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SubmittedTask:
    """One task the code under test queued, as the worker would receive it.

    Attributes:
        task_id: the id the caller got back.
        name: the task name (``vocalborn.analyze_audio`` for analyses).
        queue: the queue it would have been sent to.
        arguments: its keyword arguments as JSON, as they would travel.
        request: for an analysis, the validated request (recordings resolved and checked).
    """

    task_id: str
    name: str
    queue: str
    arguments: dict[str, Any]
    request: AnalysisRequest | None = None


@dataclass(eq=False)
class _Task:
    submitted: SubmittedTask
    definition: TaskDefinition[..., Any]
    status: TaskStatus
    done: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[asyncio.Queue[TaskStatus]] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None
    #: The owner's digest (as the real record keeps it), None for an unowned task.
    owner: str | None = None


class FakeTaskManager:
    """A :class:`~vocalborn_tasks.facade.TaskManagerProtocol` that keeps everything in memory.

    Args:
        settings: used as the real manager uses them: ``RECORDING_ROOTS`` and
            ``RECORDING_SCHEMES`` confine recordings, ``ANALYZER`` and
            ``ANALYSIS_MAX_DURATION`` configure the engine, ``RECORDING_RESOLVER`` finds
            recordings for the keyword form. Nothing connects. ``TaskSettings()`` if omitted.
        resolver: like :class:`~vocalborn_tasks.TaskManager`'s; it also fetches non-local
            recordings for the inline analysis (the worker's job).
        analyzer: the analysis engine to run; the one named by ``ANALYZER`` (the built-in
            one by default) if omitted.
        hold: start with :meth:`hold` on: submitted tasks stay PENDING until driven.
    """

    def __init__(
        self,
        settings: TaskSettings | None = None,
        *,
        resolver: RecordingResolver | None = None,
        analyzer: Analyzer | None = None,
        hold: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else TaskSettings()
        self._resolver = resolver
        self._analyzer = analyzer
        self._holding = hold
        self._broker_up = True
        self._closed = False
        self._tasks: dict[str, _Task] = {}
        self._inflight: dict[tuple[str | None, str], str] = {}
        #: Every task queued, in order (a test asserts what the code under test sent).
        self.submitted: list[SubmittedTask] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<FakeTaskManager {len(self._tasks)} tasks {state}>"

    # --- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following running tasks (their threads are abandoned) and refuse further use."""
        if self._closed:
            return
        self._closed = True
        runners = [t.runner for t in self._tasks.values() if t.runner is not None]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def _ensure_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("this TaskManager is closed; create a new one")

    def _reach_broker(self, what: str) -> None:
        self._ensure_open()
        if not self._broker_up:
            raise BrokerUnavailableError(
                f"{what}: Redis unreachable (simulated by FakeTaskManager.broker_outage)"
            )

    async def ping(self) -> float:
        """0.0 milliseconds, or :class:`BrokerUnavailableError` during an outage."""
        self._reach_broker("ping")
        return 0.0

    # --- controls ---------------------------------------------------------------------------
    def hold(self) -> None:
        """Keep tasks submitted from now on PENDING, as if no worker were running."""
        self._holding = True

    def release(self, *, run_held: bool = True) -> None:
        """Stop holding: new tasks run at once again, and so does every held task now.

        With ``run_held=False`` the tasks held so far stay PENDING (run them one by one with
        :meth:`run`, or drive them by hand).
        """
        self._holding = False
        if not run_held:
            return
        for task in self._tasks.values():
            if task.status.state is TaskState.PENDING and task.runner is None:
                self._launch(task)

    @property
    def holding(self) -> bool:
        """Whether new tasks stay PENDING (see :meth:`hold`)."""
        return self._holding

    @contextlib.contextmanager
    def broker_outage(self) -> Iterator[None]:
        """Within the block, every call that needs Redis raises ``BrokerUnavailableError``.

        Validation still comes first, as with the real manager: an invalid request raises
        ``InvalidRequestError`` whether or not the broker is up. Tasks already running go on.
        """
        self._broker_up = False
        try:
            yield
        finally:
            self._broker_up = True

    async def run(self, task: str | TaskHandle[Any]) -> TaskStatus:
        """Run a held task now (the real body, in a thread) and return its final status.

        A task already running or finished is only waited for.
        """
        entry = self._entry(task)
        if entry.status.state is TaskState.PENDING and entry.runner is None:
            self._launch(entry)
        await entry.done.wait()
        return entry.status

    async def join(self) -> None:
        """Wait until no task is running (held PENDING tasks do not count)."""
        while runners := [t.runner for t in self._tasks.values() if t.runner is not None]:
            await asyncio.wait(runners)

    def start(self, task: str | TaskHandle[Any]) -> TaskStatus:
        """Mark a held task STARTED, as a worker does when it picks it up."""
        return self._drive(task, state=TaskState.STARTED, step="started", progress=0.0)

    def progress(self, task: str | TaskHandle[Any], step: str, percent: float) -> TaskStatus:
        """Publish PROGRESS (``step``, ``percent`` clamped to 0-100), as ``report_progress``."""
        percent = max(0.0, min(100.0, float(percent)))
        return self._drive(task, state=TaskState.PROGRESS, step=step, progress=percent)

    def finish(self, task: str | TaskHandle[Any], result: Any) -> TaskStatus:
        """End the task in SUCCESS with ``result`` (e.g. an :class:`AnalysisResult`).

        The result is stored as JSON, as a worker stores it; ``wait_for_result`` validates it
        back into the task's declared type (``AnalysisResult`` for an analysis).
        """
        return self._drive(task, state=TaskState.SUCCESS, result=to_jsonable_python(result))

    def fail(
        self,
        task: str | TaskHandle[Any],
        code: str = "internal",
        message: str | None = None,
        *,
        error_type: str = "TaskFailedError",
        retryable: bool = False,
    ) -> TaskStatus:
        """End the task in FAILURE with ``code`` (e.g. ``"too_short"``, ``"time_limit"``).

        ``cause`` and the public message follow from the code, as for a worker's failure
        (:data:`vocalborn_tasks.errors.ERROR_CODES`); an unknown code is a ``"system"`` one.
        """
        error = TaskErrorInfo(
            type=error_type,
            message=message if message is not None else f"simulated failure: {code}",
            code=code,
            retryable=retryable,
        )
        return self._drive(task, state=TaskState.FAILURE, error=error)

    def expire(self, task: str | TaskHandle[Any]) -> TaskStatus:
        """Make the task EXPIRED, as when its result outlived ``RESULT_EXPIRES``."""
        return self._forget(task, TaskState.EXPIRED)

    def lose(self, task: str | TaskHandle[Any]) -> TaskStatus:
        """Make the task LOST, as after a server restart without persistence."""
        return self._forget(task, TaskState.LOST)

    # --- submitting -------------------------------------------------------------------------
    @property
    def resolver(self) -> RecordingResolver:
        """The recording resolver in use."""
        if self._resolver is None:
            self._resolver = load_resolver(self.settings)
        return self._resolver

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
        """Validate and queue one analysis, as :meth:`TaskManager.submit_audio_analysis`."""
        req = build_request(
            request,
            {
                "practice_record_id": practice_record_id,
                "recording": recording,
                "reference": reference,
                "language": language,
                "analysis_params": analysis_params,
            },
        )
        (submitted,) = await self.submit_analyses([req], force=force, owner=owner)
        return submitted.task_id

    async def submit_batch(
        self,
        requests: Iterable[AnalysisRequest],
        *,
        force: bool = False,
        owner: str | None = None,
    ) -> list[str]:
        """Validate all, then queue each, as :meth:`TaskManager.submit_batch`."""
        submitted = await self.submit_analyses(requests, force=force, owner=owner)
        return [s.task_id for s in submitted]

    async def submit_analyses(
        self,
        requests: Iterable[AnalysisRequest],
        *,
        force: bool = False,
        owner: str | None = None,
    ) -> list[Submission]:
        """Validate all, then queue each, as :meth:`TaskManager.submit_analyses`."""
        tag = scope_owner(owner)
        self._ensure_open()
        prepared = await prepare_requests(requests, lambda: self.resolver, self.settings)
        if not prepared:
            return []
        self._reach_broker("submit")
        out = []
        for req in prepared:
            slot = (tag, req.practice_record_id)
            holder = self._inflight.get(slot)
            if not force and holder is not None and not self._tasks[holder].status.is_final:
                out.append(Submission(holder, duplicate=True))
                continue
            task = self._add(analyze_audio, analyze_audio.encode_arguments(req), req, owner=tag)
            self._inflight[slot] = task.submitted.task_id
            out.append(Submission(task.submitted.task_id, duplicate=False))
        return out

    async def submit(
        self, definition: TaskDefinition[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]:
        """Queue a task definition with type-checked arguments, as :meth:`TaskManager.submit`."""
        self._ensure_open()
        try:
            encoded = definition.encode_arguments(*args, **kwargs)
        except TypeError as exc:
            raise InvalidRequestError(f"{definition.name}: {exc}") from None
        self._reach_broker("submit")
        task = self._add(definition, encoded, None)
        return TaskHandle(task.submitted.task_id, definition)

    def _add(
        self,
        definition: TaskDefinition[..., Any],
        arguments: dict[str, Any],
        request: AnalysisRequest | None,
        *,
        owner: str | None = None,
    ) -> _Task:
        task_id = new_task_id()  # the real format (UUID7), for hosts that parse or route on it
        submitted = SubmittedTask(task_id, definition.name, definition.queue, arguments, request)
        status = TaskStatus(
            task_id=task_id,
            state=TaskState.PENDING,
            task_name=definition.name,
            queue=definition.queue,
            submitted_at=datetime.now(UTC),
        )
        task = _Task(submitted=submitted, definition=definition, status=status, owner=owner)
        self._tasks[task_id] = task
        self.submitted.append(submitted)
        if not self._holding:
            self._launch(task)
        return task

    # --- running ----------------------------------------------------------------------------
    def _launch(self, task: _Task) -> None:
        task.runner = asyncio.get_running_loop().create_task(
            self._execute(task), name=f"fake task {task.submitted.task_id}"
        )

    async def _execute(self, task: _Task) -> None:
        loop = asyncio.get_running_loop()

        def report(step: str, percent: float) -> None:  # in the task's thread
            if task.status.is_final:
                # Cancelled (or driven to an end) meanwhile: stop the body here, as a worker
                # stops a cancelled task at its next progress report.
                raise TaskRevokedError(
                    f"task {task.submitted.task_id} ended", task_id=task.submitted.task_id
                )
            loop.call_soon_threadsafe(self._body_progress, task, step, percent)

        ctx = TaskContext(task_id=task.submitted.task_id, _report=report)
        try:
            if task.status.is_final:  # driven to an end by the test before it could start
                return
            self._update(task, state=TaskState.STARTED, step="started", progress=0.0)
            try:
                value = await anyio.to_thread.run_sync(
                    self._call_body, task, ctx, abandon_on_cancel=True
                )
            except Exception as exc:
                self._update(task, state=TaskState.FAILURE, error=_error_info(exc))
            else:
                self._update(task, state=TaskState.SUCCESS, result=value)
        finally:
            task.runner = None

    def _body_progress(self, task: _Task, step: str, percent: float) -> None:
        self._update(task, state=TaskState.PROGRESS, step=step, progress=percent)

    def _call_body(self, task: _Task, ctx: TaskContext) -> Any:
        """What the worker runs (blocking; in a thread)."""
        definition = task.definition
        if definition is analyze_audio:
            assert task.submitted.request is not None
            return to_jsonable_python(self._analyze(task.submitted.request, ctx))
        try:
            return definition.run_json(ctx, task.submitted.arguments)
        except ValidationError as exc:  # what the worker runtime raises for bad arguments
            raise InvalidRequestError(
                f"{definition.name}: invalid arguments ({exc.error_count()} errors)"
            ) from None

    def _analyze(self, request: AnalysisRequest, ctx: TaskContext) -> AnalysisResult:
        """The built-in analysis task's body, with this manager's analyzer and resolver."""
        from ..analysis import AnalysisOptions, load_analyzer

        if self._analyzer is None:
            self._analyzer = load_analyzer(self.settings.analyzer)
        assert request.recording is not None
        assert request.reference is not None
        ctx.report_progress("fetching", 1.0)
        inputs: list[str | bytes | Any] = []
        for what, location in (("recording", request.recording), ("reference", request.reference)):
            checked = check_recording_location(location, self.settings, what=what)
            inputs.append(
                checked if local_path(checked) is not None else self.resolver.fetch(checked)
            )
        result = self._analyzer.analyze(
            inputs[0],
            inputs[1],
            language=request.language,
            on_progress=ctx.report_progress,
            options=AnalysisOptions(max_duration_s=self.settings.analysis_max_duration_s),
        )
        return result.model_copy(update={"practice_record_id": request.practice_record_id})

    # --- state --------------------------------------------------------------------------------
    def _entry(self, task: str | TaskHandle[Any]) -> _Task:
        task_id = str(task)
        entry = self._tasks.get(task_id)
        if entry is None:
            raise TaskNotFoundError(f"no task {task_id} in this FakeTaskManager", task_id=task_id)
        return entry

    def _drive(self, task: str | TaskHandle[Any], **changes: Any) -> TaskStatus:
        entry = self._entry(task)
        if entry.status.is_final:
            raise ValueError(
                f"task {entry.submitted.task_id} is already {entry.status.state}; it cannot change"
            )
        self._update(entry, **changes)
        return entry.status

    def _forget(self, task: str | TaskHandle[Any], state: TaskState) -> TaskStatus:
        entry = self._entry(task)
        self._update(
            entry, state=state, step=None, progress=None, result=None, error=None, force=True
        )
        return entry.status

    def _update(
        self,
        task: _Task,
        *,
        state: TaskState,
        step: str | None = None,
        progress: float | None = None,
        result: Any = None,
        error: TaskErrorInfo | None = None,
        force: bool = False,
    ) -> None:
        """Store one transition and tell every watcher; a final state is never left."""
        if task.status.is_final and not force:
            return
        task.status = task.status.model_copy(
            update={
                "state": state,
                "step": step,
                "progress": progress,
                "result": result,
                "error": error,
                "date_done": datetime.now(UTC) if state.is_final else None,
            }
        )
        for queue in task.listeners:
            queue.put_nowait(task.status)
        if state.is_final:
            task.done.set()

    # --- reading ------------------------------------------------------------------------------
    def _visible(self, task_id: str, owner: str | None) -> _Task | None:
        """The task, unless scoped to an owner it does not belong to (then: unknown)."""
        entry = self._tasks.get(task_id)
        tag = scope_owner(owner)
        if entry is None or (tag is not None and entry.owner != tag):
            return None
        return entry

    def _status(self, task_id: str, owner: str | None = None) -> TaskStatus:
        entry = self._visible(task_id, owner)
        if entry is None:
            return TaskStatus(task_id=task_id, state=TaskState.NOT_FOUND)
        return entry.status

    async def get_task_status(
        self, task: str | TaskHandle[Any], *, owner: str | None = None
    ) -> TaskStatus:
        """The task's current status; ``NOT_FOUND`` for an id this manager never issued
        (or, with ``owner``, issued for another owner)."""
        task_id = str(task)
        self._reach_broker(f"status of task {task_id}")
        return self._status(task_id, owner)

    async def get_statuses(
        self, tasks: Iterable[str | TaskHandle[Any]], *, owner: str | None = None
    ) -> list[TaskStatus]:
        """Statuses of many tasks."""
        self._reach_broker("status of tasks")
        return [self._status(str(t), owner) for t in tasks]

    async def watch(
        self,
        task: str | TaskHandle[Any],
        *,
        after: str | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[TaskStatus]:
        """The status now (if later than ``after``) and at each change; ends when final.

        Raises:
            TaskNotFoundError: the id is unknown (or another owner's).
            BrokerUnavailableError: during :meth:`broker_outage`, at the start.
        """
        task_id = str(task)
        self._reach_broker(f"watch task {task_id}")
        entry = self._visible(task_id, owner)
        if entry is None:
            raise TaskNotFoundError(f"task {task_id} is unknown or has expired", task_id=task_id)
        queue: asyncio.Queue[TaskStatus] = asyncio.Queue()
        entry.listeners.append(queue)
        try:
            current = entry.status
            seen = parse_cursor(after)
            key = parse_cursor(current.cursor)
            if seen is None or (key is not None and key > seen):
                yield current
            if current.is_final:
                return
            while True:
                status = await queue.get()
                yield status
                if status.is_final:
                    return
        finally:
            entry.listeners.remove(queue)

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
        """Wait for the task's typed result, as :meth:`TaskManager.wait_for_result`."""
        task_id = str(task)
        self._reach_broker(f"wait for task {task_id}")
        entry = self._visible(task_id, owner)
        if entry is not None:
            try:
                async with asyncio.timeout(timeout):
                    await entry.done.wait()
            except TimeoutError:
                raise TaskTimeoutError(
                    f"task {task_id} did not finish within {timeout:g} s", task_id=task_id
                ) from None
        return result_of(task, self._status(task_id, owner))

    # --- cancelling ---------------------------------------------------------------------------
    async def cancel(
        self, task: str | TaskHandle[Any], *, terminate: bool = True, owner: str | None = None
    ) -> TaskStatus:
        """Cancel: REVOKED at once; a running body stops at its next progress report.

        A finished (or unknown) task is left as it is, as with the real manager.
        """
        task_id = str(task)
        self._reach_broker(f"cancel task {task_id}")
        entry = self._visible(task_id, owner)
        if entry is None or entry.status.is_final:
            return self._status(task_id, owner)
        revoked = TaskErrorInfo(type="TaskRevokedError", message="revoked", code="revoked")
        self._update(entry, state=TaskState.REVOKED, error=revoked)
        return entry.status


def _error_info(exc: BaseException) -> TaskErrorInfo:
    """What a worker stores for an exception: the code travels for the library's own errors."""
    code = None
    if isinstance(exc, VocalbornTasksError) and type(exc).__module__.startswith("vocalborn_tasks."):
        code = exc.code
    return TaskErrorInfo(type=type(exc).__name__, message=str(exc), code=code)


if TYPE_CHECKING:
    from ..facade import TaskManagerProtocol

    # The fake must keep satisfying the protocol the router depends on (checked by mypy).
    _satisfies_protocol: type[TaskManagerProtocol] = FakeTaskManager
