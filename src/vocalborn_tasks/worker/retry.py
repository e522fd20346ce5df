"""A retryable failure as one transition of the record, instead of Celery's ``Task.retry``.

``Task.retry`` publishes the next attempt through kombu's producer; the tracer then stores
RETRY and the worker acknowledges the delivery: three writes on two connections. A worker
killed after the publish had its delivery redelivered besides the retry (the task ran twice),
and with replicas a failover between the writes could keep RETRY and lose the message (the
task waited forever). Here the next attempt's message is built as ``Task.retry`` would build
it (same id, retries + 1, an ETA, the request's lineage and links) and the backend's
``retry`` script stores RETRY, queues it and acknowledges the delivery in one step, confirmed
like a final state. Celery still sees a ``Retry`` exception: its signals, events and logs
are unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import Retry

from .._protocol import build_task_message

__all__ = ["schedule_retry"]


def schedule_retry(task: Any, exc: BaseException, countdown: float, traceback: str) -> Retry:
    """Queue ``task``'s next attempt in ``countdown`` seconds; return the ``Retry`` to raise.

    Raises:
        redis.RedisError: the record could not be written within the backend's retry
            policy (or too few replicas confirmed it); nothing was queued.
    """
    request = task.request
    info = request.delivery_info or {}
    queue = str(info.get("routing_key") or task.queue)
    priority = int(info.get("priority") or 0)
    eta = datetime.now(UTC) + timedelta(seconds=countdown)
    message = build_task_message(
        str(request.id),
        task.name,
        dict(request.kwargs or {}),
        queue,
        retries=int(request.retries or 0) + 1,
        eta=eta.isoformat(),
        priority=priority,
        root_id=request.root_id,
        parent_id=request.parent_id,
        group=request.group,
        group_index=request.group_index,
        timelimit=_timelimit(request.timelimit),
        ignore_result=bool(request.ignore_result),
        embed={
            "callbacks": request.callbacks,
            "errbacks": request.errbacks,
            "chain": request.chain,
            "chord": request.chord,
        },
    )
    task.backend.store_retry(
        request, exc, traceback, message=message, queue=queue, priority=priority
    )
    return Retry(exc=exc, when=countdown)


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return (value[0], value[1])
    return (None, None)
