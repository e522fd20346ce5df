"""The worker side of every task: delivery cap, revocation check, retries, progress.

Each worker process builds one :class:`WorkerRuntime` per app, lazily, after it has forked
(so no connection or model is shared across processes). Task bodies reach it through
``TaskContext.runtime``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore
from pydantic import ValidationError

from ..errors import DeliveryLimitError, InvalidRequestError, RetryableTaskError, is_retryable
from ..recordings import RecordingResolver, load_resolver
from ..sinks import ResultSink, as_result_sink
from .definition import TaskContext, TaskDefinition

if TYPE_CHECKING:
    import redis

    from ..analysis import Analyzer
    from ..app import VocalbornCelery
    from ..config import TaskSettings

__all__ = ["WorkerRuntime", "execute_definition", "register_task", "runtime_for"]

logger = logging.getLogger(__name__)

_RUNTIME_ATTR = "_vocalborn_runtime"

#: How long a run may hold the sink claim. A run killed while holding it delays the
#: redelivered run by at most this long (instead of failing it).
_SINK_CLAIM_TTL_S = 15

#: Store a PROGRESS meta unless the task already has a final state (a cancel stored REVOKED):
#: a running task must not overwrite its own cancellation. KEYS: meta key; ARGV: meta, TTL.
_PROGRESS_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  local s = ok and decoded['status'] or ''
  if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

#: Begin a delivery: count it, check the revoke set and, unless revoked, list the task as
#: running and store STARTED (never over a final state). KEYS: delivery counter, revoke set,
#: running hash, meta key. ARGV: task id, counter TTL, running entry, STARTED meta, meta TTL.
#: Returns {delivery number, 1 if revoked else 0}.
_BEGIN_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {n, 1} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local cur = redis.call('GET', KEYS[4])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  local s = ok and type(decoded) == 'table' and decoded['status'] or ''
  if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return {n, 0} end
end
redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
redis.call('PUBLISH', KEYS[4], ARGV[4])
return {n, 0}
"""

#: Delete a sink claim only if it is still the caller's (KEYS: claim key; ARGV: token).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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

    def begin_delivery(self, task: Any) -> tuple[int, bool]:
        """Start a delivery of ``task`` in one round trip (see ``_BEGIN_SCRIPT``).

        Counts the delivery, checks the persistent revoke set and, unless revoked, stores
        STARTED (Celery's ``task_track_started`` is off: it would cost a round trip of its own)
        and lists the task as running for the Monitor's wait estimate.

        Returns:
            ``(delivery number, revoked)``.
        """
        from ..stats import running_entry

        s = self.settings
        request = task.request
        task_id: str = request.id
        hostname = str(getattr(request, "hostname", "") or "")
        started = _meta_json(task_id, "STARTED", {"pid": os.getpid(), "hostname": hostname})
        count, revoked = self._script(_BEGIN_SCRIPT)(
            keys=[
                s.key("deliveries", task_id, str(request.retries or 0)),
                s.key("revoked"),
                s.key("stats", "running"),
                f"celery-task-meta-{task_id}",
            ],
            args=[
                task_id,
                int(s.visibility_timeout_s + s.task_time_limit_s) * (s.max_deliveries + 1),
                running_entry(task),
                started,
                max(1, int(s.result_expires_s)),
            ],
        )
        return int(count), bool(revoked)

    def _script(self, source: str) -> Any:
        """A registered script (EVALSHA, loaded on first NOSCRIPT), one per process."""
        scripts: dict[str, Any] = self.__dict__.setdefault("_scripts", {})
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = self.redis.register_script(source)
        return script

    def deliver_once(self, task_id: str, deliver: Any) -> bool:
        """Call ``deliver()`` unless a run of this task already had it acknowledged.

        Two runs of one task can overlap (a worker's main process was killed while its pool
        child went on; the message was handed to another worker). A claim key makes them take
        turns: the first run claims, delivers, then marks the key ``acked``; a run that finds
        ``acked`` skips the sink, and one that finds a live claim waits for its outcome. A run
        that dies between claiming and acknowledging leaves a claim that expires after
        ``_SINK_CLAIM_TTL_S``; the waiting run then takes over (so a sink call that takes longer
        than that may overlap with a redelivered run's: the sink's at-least-once window).

        Returns:
            True if ``deliver`` ran now, False if it had already been acknowledged.

        Raises:
            RetryableTaskError: another run has held the claim for too long.
        """
        s = self.settings
        key = s.key("sink-acked", task_id)
        token = f"claim:{uuid.uuid4()}"
        claim_ttl = _SINK_CLAIM_TTL_S
        deadline = time.monotonic() + claim_ttl + 5.0
        while not self.redis.set(key, token, nx=True, ex=claim_ttl):
            current = self.redis.get(key)
            if current in (b"1", b"acked", "1", "acked"):
                logger.info("task %s: the sink already stored its result; skipping", task_id)
                return False
            if time.monotonic() > deadline:
                raise RetryableTaskError(
                    f"task {task_id}: another run is still handing its result to the sink"
                )
            time.sleep(0.1)
        try:
            deliver()
        except BaseException:
            # Give the claim back at once, but only if it is still ours.
            self._script(_RELEASE_SCRIPT)(keys=[key], args=[token])
            raise
        self.redis.set(key, "acked", ex=int(s.result_expires_s * 2))
        return True

    def store_progress(self, task_id: str, step: str, percent: float) -> bool:
        """Publish PROGRESS in Celery's meta format; False if the task was cancelled meanwhile."""
        meta = _meta_json(task_id, "PROGRESS", {"step": step, "percent": percent})
        stored = self._script(_PROGRESS_SCRIPT)(
            keys=[f"celery-task-meta-{task_id}"],
            args=[meta, max(1, int(self.settings.result_expires_s))],
        )
        return bool(stored)

    def backoff(self, retries: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random."""
        s = self.settings
        ceiling = min(s.retry_backoff_max_s, s.retry_backoff_s * float(2**retries))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _meta_json(task_id: str, status: str, result: Any) -> str:
    """A state in Celery's result-meta format (what its backend would store), as JSON."""
    return json.dumps(
        {
            "status": status,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
    )


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
    delivery, revoked = runtime.begin_delivery(task)
    if revoked:
        logger.info("task %s was revoked; not running it", task_id)
        task.backend.mark_as_revoked(task_id, "revoked", request=request)
        raise Ignore()
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
        return definition.run_json(ctx, kwargs)
    except ValidationError as exc:
        raise InvalidRequestError(
            f"{definition.name}: invalid arguments ({exc.error_count()} errors): "
            + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        ) from None
    except Ignore:
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
            raise task.retry(
                exc=exc, countdown=countdown, max_retries=runtime.settings.max_retries
            ) from exc
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
        acks_late=True,
        reject_on_worker_lost=True,
    )
