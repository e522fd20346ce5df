"""Celery's Redis result backend, storing a state through the task record's ``store`` script.

Celery stores each state with a GET (to avoid overwriting a SUCCESS) followed by a MULTI of
SETEX and PUBLISH, and the worker acknowledges the message in a third round trip. The ``store``
script does the check, the write, the publish, the submit marker's ``done`` and the run's
statistics, and removes the message's ``unacked`` entry when the state ends the delivery: the
outcome and the acknowledgement are one step, so a worker killed between them can neither
lose the result nor have the task run again. With replicas to confirm (``REDIS_REPLICA_ACKS``)
an outcome is published only once they hold it (:mod:`vocalborn_tasks.record.confirm`).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from ..record import Record, RecordKeys, calls
from ..record.confirm import Confirmation
from . import faults
from .celery_private import delivery_tag_of, result_expiry
from .result_logging import note_cancelled_while_finishing
from .stats_recorder import recorder_of

__all__ = ["VocalbornRedisBackend"]


class VocalbornRedisBackend(RedisBackend):  # type: ignore[misc]
    """The result backend of the library's apps (``app.backend_cls``)."""

    _record: Record | None = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        task_id = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        meta["task_id"] = task_id
        value = self.encode(meta)
        tag = delivery_tag_of(request)
        faults.point("before_store", task_id)
        self.ensure(self._store, (task_id, value, result_expiry(self, state), state, tag, result))
        faults.point("after_store", task_id)
        return result

    def _store(
        self, task_id: str, value: Any, expires: Any, state: str, tag: str, result: Any
    ) -> None:
        client = self.client  # after a fork the backend has a new one
        settings = self.app.settings
        if self._record is None or self._record.client is not client:
            self._record = Record(client, Confirmation.of(settings))
        record = self._record
        keys = RecordKeys.of(settings)
        seconds = (
            int(expires.total_seconds()) if hasattr(expires, "total_seconds") else int(expires or 0)
        )
        recorder = recorder_of(self.app)
        stats, if_revoked = (
            recorder.finish_ops(task_id, state, result) if recorder is not None else (None, None)
        )
        ends_delivery = state in states.READY_STATES or state == states.RETRY
        # An outcome (and a retry's requeue before it) is confirmed by replicas before anyone
        # hears it: a failover must not take back a result waiters or the sink acted on.
        confirmed = ends_delivery and record.confirms
        run = record.run_confirmed if confirmed else record.run
        stored = run(
            calls.store(
                keys,
                task_id=task_id,
                meta=value,
                meta_ttl_s=seconds,
                state=state,
                stats=stats,
                delivery_tag=tag if ends_delivery else None,
                broker_db=settings.redis_db_broker,
                result_db=settings.redis_db_backend,
                stats_if_revoked=if_revoked,
                publish=not confirmed,
            )
        )
        refused = not stored and state in states.READY_STATES
        if refused and record.meta_status(keys, task_id) == states.REVOKED:
            # A cancel landed as the task finished: the caller saw REVOKED, the statistics
            # counted it so; the worker's log line must say it too.
            note_cancelled_while_finishing(task_id)
