"""Celery's Redis result backend, storing a state through the task record's ``store`` script.

Celery stores each state with a GET (to avoid overwriting a SUCCESS) followed by a MULTI of
SETEX and PUBLISH, and the worker acknowledges the message in a third round trip. The ``store``
script does the check, the write, the publish, the submit marker's ``done`` and the run's
statistics, and removes the message's ``unacked`` entry when the state ends the delivery: the
outcome and the acknowledgement are one step, so a worker killed between them can neither
lose the result nor have the task run again.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from ..record import RecordKeys, ScriptSet
from . import faults
from .celery_private import delivery_tag_of, result_expiry
from .result_logging import note_cancelled_while_finishing
from .stats_recorder import recorder_of

__all__ = ["VocalbornRedisBackend"]


class VocalbornRedisBackend(RedisBackend):  # type: ignore[misc]
    """The result backend of the library's apps (``app.backend_cls``)."""

    _scripts: ScriptSet | None = None

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
        if self._scripts is None or self._scripts.client is not client:
            self._scripts = ScriptSet(client)
        settings = self.app.settings
        keys = RecordKeys.of(settings)
        seconds = (
            int(expires.total_seconds()) if hasattr(expires, "total_seconds") else int(expires or 0)
        )
        recorder = recorder_of(self.app)
        stats, if_revoked = (
            recorder.finish_ops(task_id, state, result) if recorder is not None else (None, None)
        )
        stored = self._scripts["store"](
            keys=[keys.meta(task_id), keys.marker(task_id), keys.unacked, keys.unacked_index],
            args=[
                value,
                seconds,
                state,
                stats or "",
                tag if (state in states.READY_STATES or state == states.RETRY) else "",
                settings.redis_db_broker,
                settings.redis_db_backend,
                if_revoked or "",
            ],
        )
        if not stored and state in states.READY_STATES:
            current = self._scripts.client.get(keys.meta(task_id))
            if current is not None and self.decode(current).get("status") == states.REVOKED:
                # A cancel landed as the task finished: the caller saw REVOKED, the
                # statistics counted it so; the worker's log line must say it too.
                note_cancelled_while_finishing(task_id)
