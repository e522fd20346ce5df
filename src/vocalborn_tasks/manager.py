"""TaskManager: the async facade a host application talks to.

It validates requests before anything is queued, publishes task messages with ``redis.asyncio``
(no blocking kombu producer on the event loop; the submit marker and the message go in one
round trip, by a script), and reads and awaits results natively through
:mod:`vocalborn_tasks.results`. Celery stays reachable for experts as :attr:`TaskManager.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

from pydantic import JsonValue

from ._protocol import build_task_message
from ._redis import async_client, pubsub_connection_factory, redis_errors
from .config import TaskSettings
from .errors import (
    BrokerUnavailableError,
    InvalidRequestError,
    ManagerClosedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from .models import (
    AnalysisRequest,
    AnalysisResult,
    Submission,
    TaskState,
    TaskStatus,
    parse_cursor,
)
from .outcomes import build_request, prepare_requests, result_of, scope_owner
from .record import AsyncRecord, RecordKeys, calls, load_script_files, new_task_id
from .record.calls import ScriptCall
from .record.confirm import Confirmation, relocate
from .recordings import (
    RecordingResolver,
    load_resolver,
    warm_up_probe,
)
from .results import PubSubHub, ResultReader
from .tasks.builtin import analyze_audio
from .tasks.definition import TaskDefinition, TaskHandle

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .worker.factory import VocalbornCelery

__all__ = ["TaskManager"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Threads for the submit path's file checks (realpath, stat, a header read): enough that a
#: slow volume does not serialise a burst of submits, few enough to stay out of the way.
_FILE_THREADS = 4


def _warm_up_submit_path() -> None:
    """Blocking one-off work of a first submit: the probe's imports (30-45 ms under the GIL)
    and the record's script files (read from the package, with importlib's readers)."""
    load_script_files()
    warm_up_probe()


class TaskManager:
    """Submit, follow, await and cancel tasks from async code.

    Use it as ``async with TaskManager(settings) as manager``; it opens connections lazily and
    closes them on exit. One manager is meant to be shared by a whole application: all its
    waiters share one pub/sub connection.

    **Owners.** A host serving several users passes each call the caller's identity as
    ``owner=`` (any non-empty string: an account id). An analysis submitted with an owner
    records it (as a digest: the record never holds the identity, and the library never logs
    it); de-duplication is then per (owner, practice record), so two users never share a task;
    and a read, watch, wait or cancel with ``owner=`` treats a task of another owner (or of
    none) exactly as an unknown id (``NOT_FOUND``, :class:`TaskNotFoundError`), so it cannot
    even learn that the id exists. ``owner=None`` (the default) is unscoped: an operator's or
    a single-user host's view of every task.

    Args:
        settings: connection and behaviour; ``TaskSettings()`` (environment) if omitted.
        resolver: maps practice record ids to recordings for the seed's call form; defaults to
            the one named by ``RECORDING_RESOLVER``, else local files only.
    """

    def __init__(
        self,
        settings: TaskSettings | None = None,
        *,
        resolver: RecordingResolver | None = None,
    ) -> None:
        self.settings = settings if settings is not None else TaskSettings()
        self._resolver = resolver
        self._app: VocalbornCelery | None = None
        self._backend: aioredis.Redis | None = None
        self._hub: PubSubHub | None = None
        self._reader: ResultReader | None = None
        self._record: AsyncRecord | None = None
        self._keys = RecordKeys.of(self.settings)
        self._closed = False
        self._files: ThreadPoolExecutor | None = None
        self._warm: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TaskManager {self.settings.redacted_broker_url} {state}>"

    # --- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._ensure_open()
        await self._warm_up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection. The manager refuses further use afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._files is not None:
            self._files.shutdown(wait=False, cancel_futures=True)
        if self._hub is not None:
            await self._hub.aclose()
        if self._backend is not None:
            await self._backend.aclose()

    def _ensure_open(self) -> ResultReader:
        if self._closed:
            raise ManagerClosedError("this TaskManager is closed; create a new one")
        if self._reader is None:
            self._backend = async_client(self.settings, "backend")
            backend = self._backend
            self._hub = PubSubHub(
                pubsub_connection_factory(self.settings),
                connect_timeout_s=self.settings.redis_connect_timeout_s,
                on_reconnect=lambda: relocate(backend),
            )
            self._reader = ResultReader(
                self._backend, self._hub, keys=self._keys, record_ttl_s=self._marker_ttl_s
            )
            self._record = AsyncRecord(self._backend, Confirmation.of(self.settings))
        return self._reader

    def _file_threads(self) -> ThreadPoolExecutor:
        if self._files is None:
            self._files = ThreadPoolExecutor(_FILE_THREADS, thread_name_prefix="vocalborn-files")
        return self._files

    async def _warm_up(self) -> None:
        """Pay the submit path's one-off costs at open, off the event loop: the file thread,
        the record's script files and the recording probe's imports (soundfile, numpy). A
        manager used without ``async with`` pays them at its first submit instead, the same
        way. The import still holds the GIL, so the loop stalls once, here, at open."""
        loop = asyncio.get_running_loop()
        if self._warm is None or (not self._warm.done() and self._warm.get_loop() is not loop):
            self._warm = loop.run_in_executor(self._file_threads(), _warm_up_submit_path)
        if not self._warm.done():
            # Shielded: a cancelled opener must not leave a later submit without the import.
            # A missing soundfile is reported by the probe itself, at the submit that needs it.
            with contextlib.suppress(ImportError):
                await asyncio.shield(self._warm)

    @property
    def app(self) -> VocalbornCelery:
        """The Celery app behind the facade, for experts (built on first access)."""
        if self._app is None:
            from .worker.factory import create_celery_app

            self._app = create_celery_app(self.settings)
        return self._app

    @property
    def _write_timeout_s(self) -> float:
        """How long a write callers act on may take: it rides out a failover when replicas
        must confirm it (``REDIS_FAILOVER_WAIT_S``), else the connect timeout."""
        s = self.settings
        if s.replica_acks > 0:
            return s.redis_failover_wait_s + s.redis_connect_timeout_s
        return s.redis_connect_timeout_s

    @property
    def _marker_ttl_s(self) -> int:
        """How long a submit marker lives: a queued task plus twice its result's lifetime."""
        s = self.settings
        return int(s.result_expires_s * 2 + s.visibility_timeout_s)

    async def ping(self) -> float:
        """Round-trip time to the server in milliseconds.

        Raises:
            BrokerUnavailableError: unreachable within the connect timeout.
        """
        self._ensure_open()
        assert self._backend is not None
        started = time.perf_counter()
        async with redis_errors(self.settings, "ping"):
            await self._backend.ping()
        return (time.perf_counter() - started) * 1000

    # --- submitting ---------------------------------------------------------------------------
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
        """Queue one analysis and return its task id at once.

        Pass an :class:`AnalysisRequest`, or the seed's keyword form (``practice_record_id=...,
        analysis_params=...``) where the recording resolver finds the files.

        If the same practice record already has an analysis queued or running, its task id is
        returned and nothing new is queued, unless ``force`` is true. With ``owner`` (see
        the class docstring), only that owner's in-flight analysis counts.

        Raises:
            InvalidRequestError: the request is invalid (bad id, a recording outside the roots,
                missing file, oversized parameters...); nothing was queued.
            BrokerUnavailableError: Redis could not be reached within the connect timeout.
        """
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
        """Queue many analyses in one pipelined round trip; all are validated first.

        Returns the task ids in the order of ``requests`` (an existing id where a record was
        already in flight). Nothing is queued if any request is invalid.
        """
        submitted = await self.submit_analyses(requests, force=force, owner=owner)
        return [s.task_id for s in submitted]

    async def submit_analyses(
        self,
        requests: Iterable[AnalysisRequest],
        *,
        force: bool = False,
        owner: str | None = None,
    ) -> list[Submission]:
        """:meth:`submit_batch`, telling for each request whether it was a duplicate.

        A duplicate (the practice record already in flight for the same owner) queued
        nothing: its :class:`Submission` carries the existing task's id and
        ``duplicate=True``, so the caller can say so, and delete files it stored only for it.
        """
        tag = scope_owner(owner)
        return await self._submit_analyses(list(requests), force=force, owner=tag)

    async def _submit_analyses(
        self, requests: list[AnalysisRequest], *, force: bool, owner: str | None
    ) -> list[Submission]:
        self._ensure_open()
        await self._warm_up()
        prepared = await prepare_requests(
            requests, lambda: self.resolver, self.settings, executor=self._file_threads()
        )
        if not prepared:
            return []
        settings = self.settings
        definition = analyze_audio
        claims = []
        new_ids = []
        for req in prepared:
            task_id = new_task_id()
            new_ids.append(task_id)
            message = build_task_message(
                task_id, definition.name, definition.encode_arguments(req), definition.queue
            )
            claims.append(
                calls.claim(
                    self._keys,
                    task_id=task_id,
                    task_name=definition.name,
                    queue=definition.queue,
                    practice_record_id=req.practice_record_id,
                    message=message,
                    marker_ttl_s=self._marker_ttl_s,
                    broker_db=settings.redis_db_broker,
                    force=force,
                    owner=owner,
                )
            )
        async with redis_errors(settings, "submit", timeout=self._write_timeout_s):
            holders = await self._write(claims)
        return [
            Submission(holder, duplicate=holder != new)
            for holder, new in zip(holders, new_ids, strict=True)
        ]

    async def submit(
        self, definition: TaskDefinition[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[R]:
        """Queue any registered task definition with type-checked arguments.

        The returned handle remembers the definition, so ``wait_for_result(handle)`` returns
        the function's declared return type.

        Raises:
            InvalidRequestError: the arguments do not fit the function's signature.
            BrokerUnavailableError: Redis could not be reached in time.
        """
        self._ensure_open()
        try:
            encoded = definition.encode_arguments(*args, **kwargs)
        except TypeError as exc:
            raise InvalidRequestError(f"{definition.name}: {exc}") from None
        task_id = new_task_id()
        settings = self.settings
        message = build_task_message(task_id, definition.name, encoded, definition.queue)
        call = calls.submit(
            self._keys,
            task_id=task_id,
            task_name=definition.name,
            queue=definition.queue,
            message=message,
            marker_ttl_s=self._marker_ttl_s,
            broker_db=settings.redis_db_broker,
        )
        async with redis_errors(settings, "submit", timeout=self._write_timeout_s):
            await self._write([call])
        return TaskHandle(task_id, definition)

    async def _write(self, writes: Sequence[ScriptCall[T]]) -> list[T]:
        """Run submit transitions (each harmless to run twice), confirmed by replicas when
        any must hold them, and return their replies: one round trip either way."""
        record = self._record
        assert record is not None
        return await record.run_many_confirmed(writes)

    # --- reading ------------------------------------------------------------------------------
    async def get_task_status(
        self, task: str | TaskHandle[Any], *, owner: str | None = None
    ) -> TaskStatus:
        """The task's current status (one round trip).

        Unknown and expired ids are reported as ``NOT_FOUND``/``EXPIRED``, not PENDING; an id
        the server has forgotten (a data loss since it was submitted) is ``LOST``, the same
        answer in every process (see :mod:`vocalborn_tasks.record.task_ids`). With
        ``owner``, another owner's task reads as an unknown id.
        """
        reader = self._ensure_open()
        task_id = str(task)
        tag = scope_owner(owner)
        async with redis_errors(self.settings, f"status of task {task_id}"):
            return await reader.fetch(task_id, tag)

    async def get_task_statuses(
        self, tasks: Iterable[str | TaskHandle[Any]], *, owner: str | None = None
    ) -> list[TaskStatus]:
        """The batch form of :meth:`get_task_status`: many tasks in one pipelined round trip.

        Returns the statuses in the order of ``tasks``, with the same states (``NOT_FOUND``,
        ``EXPIRED``, ``LOST``) as the single form.
        """
        return await self.get_statuses(tasks, owner=owner)

    async def get_statuses(
        self, tasks: Iterable[str | TaskHandle[Any]], *, owner: str | None = None
    ) -> list[TaskStatus]:
        """The same as :meth:`get_task_statuses` (its first name, kept for existing hosts)."""
        reader = self._ensure_open()
        ids = [str(t) for t in tasks]
        tag = scope_owner(owner)
        async with redis_errors(self.settings, "status of tasks"):
            return await reader.fetch_many(ids, owners=[tag] * len(ids))

    async def watch(
        self,
        task: str | TaskHandle[Any],
        *,
        after: str | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[TaskStatus]:
        """Yield the task's status now and at each change (progress included); ends when final.

        Every status names the task (``task_name``). A broker blip while following (a Redis
        restart, a failover) is waited out, like :meth:`wait_for_result` does: once Redis
        answers again the stream re-reads the task and goes on, without repeating the status
        it last yielded; it gives up after ``BROKER_OUTAGE_TOLERANCE`` seconds. A task the
        server forgot meanwhile ends the stream with ``LOST``.

        Args:
            after: the :attr:`TaskStatus.cursor` of the last status the caller saw (e.g. an
                SSE ``Last-Event-ID``): the current status is only yielded if it is later,
                then every change. After a final status's cursor, nothing is yielded.
            owner: scope to this owner (another owner's task is an unknown id).

        Raises:
            TaskNotFoundError: the id is unknown or expired (or another owner's).
            BrokerUnavailableError: Redis is unreachable at the start, or stayed unreachable
                for longer than ``BROKER_OUTAGE_TOLERANCE`` while following.
        """
        reader = self._ensure_open()
        task_id = str(task)
        tag = scope_owner(owner)
        seen = parse_cursor(after)
        last: TaskStatus | None = None
        tolerance = self.settings.broker_outage_tolerance_s
        outage_since: float | None = None
        pause = 0.05
        while True:
            stream = reader.watch(task_id, tag)
            try:
                try:
                    async with redis_errors(self.settings, f"watch task {task_id}"):
                        first = await anext(stream)
                except TaskNotFoundError:
                    if last is None:
                        raise
                    # Known a moment ago, unknown after the outage: the server forgot it.
                    yield last.model_copy(
                        update={"state": TaskState.LOST, "step": None, "progress": None}
                    )
                    return
                outage_since, pause = None, 0.05
                key = parse_cursor(first.cursor)
                if seen is None or (key is not None and key > seen):
                    last = first
                    yield first
                elif first.is_final:
                    return  # the caller saw the final state already
                last = last or first
                if first.is_final:
                    return
                async with redis_errors(self.settings, f"watch task {task_id}", bounded=False):
                    async for status in stream:
                        if status.task_name is None:
                            status = status.model_copy(update={"task_name": last.task_name})
                        last = status
                        seen = parse_cursor(status.cursor)
                        yield status
                return
            except BrokerUnavailableError as exc:  # BrokerAuthError is not one: it propagates
                if last is None:
                    raise
                now = time.monotonic()
                outage_since = outage_since if outage_since is not None else now
                if now - outage_since + pause > tolerance:
                    raise
                logger.warning(
                    "watch task %s: Redis unavailable (%s); retrying in %.2f s", task_id, exc, pause
                )
                seen = parse_cursor(last.cursor)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            finally:
                await stream.aclose()

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
        """Wait until the task finishes and return its typed result.

        A task id string is taken to be an audio analysis (returns :class:`AnalysisResult`);
        a :class:`TaskHandle` returns its definition's declared type. For another task whose
        id was stored, pass ``TaskHandle.from_id(definition, task_id)``. With ``owner``,
        another owner's task is an unknown id.

        Raises:
            TaskTimeoutError: ``timeout`` seconds passed first (the task may still finish).
            TaskFailedError: the task failed (``code`` says why when known).
            TaskRevokedError: it was cancelled.
            TaskNotFoundError: unknown id, or its result expired.
            TaskLostError: the server forgot it (restart without persistence).
        """
        reader = self._ensure_open()
        task_id = str(task)
        tag = scope_owner(owner)
        try:
            async with asyncio.timeout(timeout):
                async with redis_errors(self.settings, f"wait for task {task_id}", bounded=False):
                    status = await reader.wait(task_id, tag)
        except TimeoutError:
            raise TaskTimeoutError(
                f"task {task_id} did not finish within {timeout:g} s", task_id=task_id
            ) from None
        return result_of(task, status)

    # --- cancelling ---------------------------------------------------------------------------
    async def cancel(
        self, task: str | TaskHandle[Any], *, terminate: bool = True, owner: str | None = None
    ) -> TaskStatus:
        """Cancel a task: it will not start, and a running one is stopped when ``terminate``.

        The revocation is stored in Redis (so it survives a restart of every worker), the
        REVOKED state is published at once (so waiters resolve), and, with ``terminate``, the
        worker running it stops it at once (told on the record's own channel, and checked
        on each of its heartbeats; this process builds no Celery app). Without ``terminate`` a
        running copy stops at its next progress report. A task that already finished is left
        as it is.
        With ``owner``, another owner's task is an unknown id: nothing is cancelled,
        ``NOT_FOUND`` returned.

        Returns:
            The task's status after the cancel.
        """
        self._ensure_open()
        assert self._backend is not None
        task_id = str(task)
        settings = self.settings
        tag = scope_owner(owner)
        async with redis_errors(settings, f"cancel task {task_id}", timeout=self._write_timeout_s):
            status = await self._ensure_open().fetch(task_id, tag)
            if status.is_final and status.state is not TaskState.REVOKED:
                return status
            assert self._record is not None
            # With terminate, the script also tells the worker running it (the record's
            # terminate channel, which worker heartbeats listen to): no Celery app here.
            await self._record.run_confirmed(
                calls.revoke(
                    self._keys,
                    task_id=task_id,
                    meta_ttl_s=int(settings.result_expires_s),
                    terminate=terminate,
                    publish=not self._record.confirms,
                )
            )
        return await self.get_task_status(task_id, owner=owner)
