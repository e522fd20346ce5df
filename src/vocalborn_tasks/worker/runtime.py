"""The worker side of every task: delivery cap, revocation check, retries, progress.

Each worker process builds one :class:`WorkerRuntime` per app, lazily, after it has forked
(so no connection or model is shared across processes). Task bodies reach it through
``TaskContext.runtime``.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from functools import cached_property
from traceback import format_exc
from typing import TYPE_CHECKING, Any, TypeVar

from celery.exceptions import Ignore
from pydantic import ValidationError
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import (
    AudioError,
    BrokerUnavailableError,
    ConfigurationError,
    DeliveryLimitError,
    InvalidRequestError,
    RetryableTaskError,
    is_retryable,
)
from ..record import Record, RecordKeys, calls
from ..record.confirm import Confirmation
from ..recordings import RecordingResolver, load_resolver
from ..sinks import ResultSink, as_result_sink
from ..tasks.definition import TaskContext, TaskDefinition
from . import faults
from .backend import PLAIN_JSON_RESULT
from .retry import schedule_retry

if TYPE_CHECKING:
    import redis

    from ..analysis import Analyzer
    from ..config import TaskSettings
    from .factory import VocalbornCelery

__all__ = [
    "WorkerRuntime",
    "execute_definition",
    "register_builtin_tasks",
    "register_task",
    "register_task_modules",
    "runtime_for",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: begin.lua's verdicts.
_RUN, _REVOKED, _FINISHED = 0, 1, 2

_RUNTIME_ATTR = "_vocalborn_runtime"

#: Outcomes that are about the request or the patient's recording, not the system: Celery
#: logs them as "expected" (no traceback) and the runtime logs one WARNING line with the code.
EXPECTED_FAILURES: tuple[type[Exception], ...] = (AudioError, InvalidRequestError)

#: How long a run may hold the sink claim. A run killed while holding it delays the
#: redelivered run by at most this long (instead of failing it).
_SINK_CLAIM_TTL_S = 15

#: Celery's tracer builds ``saferepr(result, resultrepr_maxsize)`` for every success (the log
#: line, the task-succeeded event), 1024 characters by default: ~0.4-0.5 ms of CPU for an
#: analysis result. Unless ``LOG_TASK_RESULTS`` is on, the log line shows a placeholder
#: instead (result_logging.py), so a short repr is all that is ever used.
_HIDDEN_RESULT_REPR = 32

#: Redis errors a worker waits out (a restart, a failover, a server still loading its data).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
_FIRST_PAUSE_S = 0.05
_MAX_PAUSE_S = 1.0


class WorkerRuntime:
    """Per-process resources of a worker: Redis client, analyzer, resolver, sink."""

    def __init__(self, app: VocalbornCelery) -> None:
        self.app = app
        self.settings: TaskSettings = app.settings

    @cached_property
    def redis(self) -> redis.Redis:
        """The result backend's own client (shares its connection pool)."""
        client: redis.Redis = self.app.backend.client
        return client

    @cached_property
    def analyzer(self) -> Analyzer:
        """The configured analyzer, loaded once per process (its reference cache lives here)."""
        from ..analysis import load_analyzer

        return load_analyzer(self.settings.analyzer)

    @cached_property
    def resolver(self) -> RecordingResolver:
        """The host's recording resolver, or the local-files default."""
        return load_resolver(self.settings)

    @cached_property
    def sink(self) -> ResultSink | None:
        """The host's result sink, if one is configured."""
        if self.settings.result_sink is None:
            return None
        from .._imports import load_object
        from ..errors import ConfigurationError

        obj = load_object(self.settings.result_sink, "RESULT_SINK")
        try:
            return as_result_sink(obj)
        except TypeError as exc:
            raise ConfigurationError(f"RESULT_SINK: {exc}") from exc

    @cached_property
    def keys(self) -> RecordKeys:
        return RecordKeys.of(self.settings)

    @cached_property
    def record(self) -> Record:
        """The task record's transitions on this process's client."""
        return Record(self.redis, Confirmation.of(self.settings))

    def patiently(self, what: str, call: Callable[[], T]) -> T:
        """Run a Redis step, waiting out an outage up to ``BROKER_OUTAGE_TOLERANCE``.

        A broker blip (a restart, a failover) in the middle of a task must cost neither the
        task nor its result: the step is retried with capped exponential pauses.

        Raises:
            BrokerUnavailableError: Redis stayed unreachable for the whole tolerance (code
                ``broker_unavailable``).
        """
        deadline = time.monotonic() + self.settings.broker_outage_tolerance_s
        pause = _FIRST_PAUSE_S
        while True:
            try:
                return call()
            except _TRANSIENT as exc:
                if time.monotonic() + pause > deadline:
                    raise BrokerUnavailableError(
                        f"{what}: Redis unreachable for longer than "
                        f"BROKER_OUTAGE_TOLERANCE ({self.settings.broker_outage_tolerance_s:g} s)"
                        f": {exc}",
                        code="broker_unavailable",
                    ) from exc
                logger.warning("%s: Redis unavailable (%s); retrying in %.2f s", what, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)

    def begin_delivery(self, task: Any) -> tuple[int, int]:
        """Start a delivery of ``task`` in one round trip (the record's ``begin`` script).

        Counts the delivery, checks the persistent revoke set and the stored state and, unless
        revoked or finished, stores STARTED (Celery's ``task_track_started`` is off: it would
        cost a round trip of its own) and lists the task as running for the Monitor.

        Returns:
            ``(delivery number, verdict)``: 0 run it, 1 revoked, 2 already finished.
        """
        from .stats_recorder import running_entry

        s = self.settings
        request = task.request
        task_id: str = request.id
        hostname = str(getattr(request, "hostname", "") or "")
        call = calls.begin(
            self.keys,
            task_id=task_id,
            retries=request.retries or 0,
            hostname=hostname,
            running_entry=running_entry(task),
            deliveries_ttl_s=int(s.visibility_timeout_s + s.task_time_limit_s)
            * (s.max_deliveries + 1),
            meta_ttl_s=int(s.result_expires_s),
        )
        return self.patiently(f"task {task_id}: begin", lambda: self.record.run(call))

    def deliver_once(self, task_id: str, deliver: Callable[[], object]) -> bool:
        """Call ``deliver()`` unless a run of this task already had it acknowledged.

        Two runs of one task can overlap (a worker's main process was killed while its pool
        child went on; the message was handed to another worker). A claim key makes them take
        turns: the first run claims, delivers, then marks the key ``acked``; a run that finds
        ``acked`` skips the sink, and one that finds a live claim waits for its outcome. A run
        that dies between claiming and acknowledging leaves a claim that expires after
        ``_SINK_CLAIM_TTL_S``; the waiting run then takes over. Every Redis step waits out a
        broker outage (:meth:`patiently`): an outage after the sink committed delays the
        acknowledgement, it does not turn a stored result into a failure or a second call.

        The one window left: a run killed after ``deliver()`` returned and before ``acked`` is
        written (one round trip) has its redelivery call the sink again.

        Returns:
            True if ``deliver`` ran now, False if it had already been acknowledged.

        Raises:
            RetryableTaskError: another run has held the claim for too long.
        """
        key = self.keys.sink(task_id)
        token = f"claim:{uuid.uuid4()}"
        deadline = time.monotonic() + _SINK_CLAIM_TTL_S + 5.0
        redis = self.redis
        what = f"task {task_id}: result sink"
        # Confirmed by replicas before the sink runs: a claim a failover takes back would let
        # a second run call the sink too. (The ``acked`` mark below is covered by the
        # confirmed store of the task's outcome that follows it.)
        claim = calls.lock(key=key, token=token, ttl_ms=_SINK_CLAIM_TTL_S * 1000)
        while not self.patiently(what, lambda: self.record.run_confirmed(claim)):
            current = self.patiently(what, lambda: redis.get(key))
            if current in (b"1", b"acked", "1", "acked"):
                logger.info("task %s: the sink already stored its result; skipping", task_id)
                return False
            if time.monotonic() > deadline:
                raise RetryableTaskError(
                    f"task {task_id}: another run is still handing its result to the sink"
                )
            time.sleep(0.1)
        try:
            faults.point("in_sink", task_id)
            deliver()
        except BaseException:
            # Give the claim back at once, but only if it is still ours (best effort: it
            # expires anyway).
            try:
                self.record.run(calls.release(key=key, token=token))
            except _TRANSIENT as exc:
                logger.warning("task %s: could not release the sink claim: %s", task_id, exc)
            raise
        faults.point("after_sink_commit", task_id)
        self.patiently(
            what, lambda: redis.set(key, "acked", ex=int(self.settings.result_expires_s * 2))
        )
        return True

    def store_progress(self, task_id: str, step: str, percent: float) -> bool:
        """Publish PROGRESS in Celery's meta format; False if the task was cancelled meanwhile.

        Progress is advisory: during a broker outage the report is dropped (the task goes on).
        """
        call = calls.progress(
            self.keys,
            task_id=task_id,
            step=step,
            percent=percent,
            meta_ttl_s=int(self.settings.result_expires_s),
        )
        try:
            stored = self.record.run(call)
        except _TRANSIENT as exc:
            logger.info("task %s: progress not stored (Redis unavailable: %s)", task_id, exc)
            return True
        return bool(stored)

    def backoff(self, retries: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random."""
        s = self.settings
        ceiling = min(s.retry_backoff_max_s, s.retry_backoff_s * float(2**retries))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def runtime_for(app: VocalbornCelery) -> WorkerRuntime:
    """The app's WorkerRuntime in this process, created on first use."""
    runtime: WorkerRuntime | None = getattr(app, _RUNTIME_ATTR, None)
    if runtime is None:
        runtime = WorkerRuntime(app)
        setattr(app, _RUNTIME_ATTR, runtime)
    return runtime


def execute_definition(
    task: Any, definition: TaskDefinition[..., Any], kwargs: dict[str, Any]
) -> Any:
    """Run one delivery of ``definition`` inside the Celery task ``task``.

    Order matters: the revocation and delivery checks come before any work, so a cancelled
    task never starts after a worker restart and a poison message stops after
    ``max_deliveries`` attempts instead of killing workers forever.
    """
    runtime = runtime_for(task.app)
    request = task.request
    task_id: str = request.id
    retries: int = request.retries or 0
    delivery, verdict = runtime.begin_delivery(task)
    if verdict == _REVOKED:
        logger.info("task %s was revoked; not running it", task_id)
        task.backend.mark_as_revoked(task_id, "revoked", request=request)
        raise Ignore()
    if verdict == _FINISHED:
        # A redelivery of a task whose outcome is stored (its worker died after storing it,
        # before the acknowledgement reached Redis): acknowledge, never run it again.
        logger.info("task %s already finished; acknowledging its redelivery", task_id)
        raise Ignore()
    faults.point("after_begin", task_id)
    if delivery > runtime.settings.max_deliveries:
        raise DeliveryLimitError(
            f"delivered {delivery} times without finishing (workers died running it); giving up"
        )

    # STARTED was stored just now; progress is stored at most every progress_min_interval_s
    # after it (a report in between is dropped: the next one, or the result, supersedes it).
    interval = runtime.settings.progress_min_interval_s
    last: list[Any] = [None, time.monotonic()]

    def report(step: str, percent: float) -> None:
        now = time.monotonic()
        if last[0] == (step, percent) or now - last[1] < interval:
            return
        last[:] = [(step, percent), now]
        if not runtime.store_progress(task_id, step, percent):
            # Cancelled while running (a pool without terminate, or the signal was lost):
            # stop here, cooperatively; the REVOKED state is already stored.
            logger.info("task %s was cancelled while running; stopping it", task_id)
            raise Ignore()

    ctx = TaskContext(
        task_id=task_id, retries=retries, delivery=delivery, runtime=runtime, _report=report
    )
    try:
        try:
            return definition.run_json(ctx, kwargs)
        except ValidationError as exc:
            raise InvalidRequestError(
                f"{definition.name}: invalid arguments ({exc.error_count()} errors): "
                + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            ) from None
    except Ignore:
        raise
    except (AudioError, InvalidRequestError) as exc:  # EXPECTED_FAILURES
        # A patient's unusable recording is a normal outcome, not a bug: one line, no traceback.
        logger.warning(
            "task %s (%s): unusable input, code %s: %s", task_id, definition.name, exc.code, exc
        )
        raise
    except Exception as exc:
        if definition.retryable and is_retryable(exc) and retries < runtime.settings.max_retries:
            countdown = runtime.backoff(retries)
            logger.warning(
                "task %s: retryable %s (%s); retry %d/%d in %.1f s",
                task_id,
                type(exc).__name__,
                exc,
                retries + 1,
                runtime.settings.max_retries,
                countdown,
            )
            try:
                retry = schedule_retry(task, exc, countdown, format_exc())
            except _TRANSIENT as failure:
                # The record could not take the retry (the broker is gone, or replicas did
                # not confirm it): nothing was queued; say so with a stable code.
                raise BrokerUnavailableError(
                    f"{definition.name}: could not schedule retry {retries + 1} "
                    f"({type(exc).__name__}: {exc}): {failure}",
                    code="broker_unavailable",
                ) from exc
            raise retry from exc
        raise


def register_task(app: VocalbornCelery, definition: TaskDefinition[..., Any]) -> Any:
    """Register ``definition`` on ``app`` as a Celery task and return that task.

    The Celery task takes keyword arguments only (JSON values); it is reachable by experts as
    ``app.tasks[definition.name]``.
    """

    def body(self: Any, **kwargs: Any) -> Any:
        return execute_definition(self, definition, kwargs)

    body.__name__ = definition.name.rsplit(".", 1)[-1]
    body.__doc__ = definition.fn.__doc__
    return app.task(
        body,
        name=definition.name,
        bind=True,
        # Not "shared": Celery would otherwise add the task to every app created afterwards.
        shared=False,
        queue=definition.queue,
        typing=False,
        throws=EXPECTED_FAILURES,
        acks_late=True,
        reject_on_worker_lost=True,
        **{PLAIN_JSON_RESULT: True},
        **({} if app.settings.log_task_results else {"resultrepr_maxsize": _HIDDEN_RESULT_REPR}),
    )


def register_builtin_tasks(app: VocalbornCelery) -> None:
    """Register the analysis, maintenance, health and test tasks on ``app``."""
    from ..tasks.builtin import BUILTIN_DEFINITIONS

    for definition in BUILTIN_DEFINITIONS:
        register_task(app, definition)


def register_task_modules(app: VocalbornCelery, modules: list[str]) -> list[str]:
    """Import each host module and register every :class:`TaskDefinition` it defines.

    What ``vocalborn-tasks worker --include myapp.tasks`` (or ``TASK_MODULES``) does: a host
    keeps its definitions in a module that both its web app and its workers import, and no
    worker module of its own is needed. The working directory is importable, as with
    ``celery -A``.

    Returns:
        The names of the tasks registered.

    Raises:
        ConfigurationError: a module cannot be imported or defines no task.
    """
    import importlib
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    names: list[str] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(
                f"TASK_MODULES/--include: cannot import {module_name!r}: {exc}"
            ) from exc
        found = [v for v in vars(module).values() if isinstance(v, TaskDefinition)]
        if not found:
            raise ConfigurationError(
                f"TASK_MODULES/--include: {module_name!r} defines no task "
                "(decorate functions with @task_definition)"
            )
        for definition in found:
            if definition.name not in app.tasks:
                register_task(app, definition)
                names.append(definition.name)
    return names
