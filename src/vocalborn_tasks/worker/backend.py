"""Celery's Redis result backend, storing a state through the task record's ``store`` script.

Celery stores each state with a GET (to avoid overwriting a SUCCESS) followed by a MULTI of
SETEX and PUBLISH, and the worker acknowledges the message in a third round trip. The ``store``
script does the check, the write, the publish, the submit marker's ``done`` and the run's
statistics, and removes the message's ``unacked`` entry when the state ends the delivery: the
outcome and the acknowledgement are one step, so a worker killed between them can neither
lose the result nor have the task run again. With replicas to confirm (``REDIS_REPLICA_ACKS``)
an outcome is published only once they hold it (:mod:`vocalborn_tasks.record.confirm`).

Its client reaches the master through the sentinels when ``REDIS_SENTINELS`` is set (the pool
of :mod:`vocalborn_tasks._connections`, as every other client of the library), and its
connections report a demoted or cut-off master as a connection error (failover.py), which
``ensure`` and ``result_backend_always_retry`` retry: every record script is idempotent.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from pydantic_core import PydanticSerializationError, to_json

from .._connections import sync_pool
from ..config import redact_url
from ..record import Record, RecordKeys, calls
from ..record.confirm import Confirmation
from . import faults
from .celery_private import delivery_tag_of, result_expiry
from .failover import FailoverConnection, FailoverSSLConnection, connection_class
from .result_logging import note_cancelled_while_finishing
from .stats_recorder import Finish, recorder_of

__all__ = ["VocalbornRedisBackend"]

#: Connection options of Celery's ``connparams`` that a sentinel pool takes over as they are
#: (the address, database, credentials and TLS come from the settings instead).
_POOL_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "retry_on_timeout",
    "health_check_interval",
    "client_name",
    "lib_name",
    "lib_version",
)

#: Set on a Celery request whose RETRY :meth:`VocalbornRedisBackend.store_retry` stored.
_RETRY_STORED = "vocalborn_retry_stored"

#: Set (as a class attribute) on the Celery task of every library definition: its return value
#: is plain JSON data already (``TaskDefinition.run_json``), so its SUCCESS meta can be encoded
#: by pydantic-core's JSON writer. kombu's pure-Python encoder took 0.25-0.35 ms of a busy
#: worker's time for an analysis result (3.6 KB); pydantic-core takes a fifth of it. The
#: output is the same JSON apart from spacing and non-ASCII text written as UTF-8 instead of
#: ``\u`` escapes; NaN and Infinity are written as Python's ``json`` writes them.
PLAIN_JSON_RESULT = "vocalborn_plain_json_result"

#: Connections per process: the task runtime's calls, the heartbeat thread and the store.
_MAX_CONNECTIONS = 10


def _is_sentinel_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith("sentinel://")


class VocalbornRedisBackend(RedisBackend):  # type: ignore[misc]
    """The result backend of the library's apps (``app.backend_cls``)."""

    _record: Record | None = None

    # --- the client ---------------------------------------------------------------------------
    def _params_from_url(self, url: str, defaults: dict[str, Any]) -> dict[str, Any]:
        if _is_sentinel_url(url):
            # ``sentinel://h:p/db;sentinel://...``: the sentinels name the master; the pool is
            # built from the settings (``_create_client``), so only the defaults are kept.
            return dict(defaults)
        params: dict[str, Any] = super()._params_from_url(url, defaults)
        return params

    def _create_client(self, **params: Any) -> Any:
        """A client whose connections follow a failover (see the module docstring)."""
        settings = self.app.settings
        if settings.uses_sentinel:
            options = {k: params[k] for k in _POOL_OPTIONS if params.get(k) is not None}
            pool = sync_pool(
                settings,
                "backend",
                max_connections=params.get("max_connections") or _MAX_CONNECTIONS,
                connection_class=connection_class(settings),
                **options,
            )
            return redis.Redis(connection_pool=pool)
        current = params.get("connection_class")
        if current is None or current is redis.Connection:
            params["connection_class"] = FailoverConnection
        elif current is redis.SSLConnection:
            params["connection_class"] = FailoverSSLConnection
        return super()._create_client(**params)

    def as_uri(self, include_password: bool = False) -> str:
        """The backend's URL for the banner; each sentinel's part masked on its own."""
        if include_password or not _is_sentinel_url(self.url):
            uri: str = super().as_uri(include_password=include_password)
            return uri
        return ";".join(redact_url(part) for part in str(self.url).split(";"))

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        task_id = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        value = self._meta_value(task_id, result, state, traceback, request)
        tag = delivery_tag_of(request)
        # The run's statistics are taken once, outside ``ensure``: a second attempt after a
        # connection error must send them again, not find them gone.
        recorder = recorder_of(self.app)
        finish = recorder.finish_ops(task_id, state, result) if recorder is not None else None
        faults.point("before_store", task_id)
        self.ensure(self._store, (task_id, value, result_expiry(self, state), state, tag, finish))
        faults.point("after_store", task_id)
        return result

    def mark_as_retry(
        self, task_id: str, exc: Any, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Celery's RETRY write, unless :meth:`store_retry` stored it with the next attempt."""
        if request is not None and getattr(request, _RETRY_STORED, False):
            return exc
        return super().mark_as_retry(task_id, exc, traceback=traceback, request=request, **kwargs)

    def store_retry(
        self,
        request: Any,
        exc: BaseException,
        traceback: str | None,
        *,
        message: bytes,
        queue: str,
        priority: int,
    ) -> None:
        """RETRY stored, the next attempt queued and this delivery acknowledged: one step.

        Celery's ``Task.retry`` publishes the next attempt, then the tracer stores RETRY, then
        the worker acknowledges: a worker killed after the publish ran the task twice (the
        redelivery and the retry), and a failover in between could keep the RETRY and lose
        the message. The ``retry`` script does all three, confirmed by replicas like a final
        state; the tracer's own RETRY write is then skipped (:meth:`mark_as_retry`).
        """
        task_id = str(request.id)
        state = states.RETRY
        value = self._meta_value(task_id, self.encode_result(exc, state), state, traceback, request)
        recorder = recorder_of(self.app)
        finish = recorder.finish_ops(task_id, state, exc) if recorder is not None else None
        settings = self.app.settings
        retries = int(request.retries or 0)
        faults.point("before_retry", task_id)

        def write() -> None:
            record = self._record_of_client()
            keys = RecordKeys.of(settings)
            run = record.run_confirmed if record.confirms else record.run
            stored = run(
                calls.retry(
                    keys,
                    task_id=task_id,
                    retry=retries + 1,
                    meta=value,
                    meta_ttl_s=int(settings.result_expires_s),
                    queue=queue,
                    priority=priority,
                    message=message,
                    stats=finish.stats if finish else None,
                    stats_if_revoked=finish.if_revoked if finish else None,
                    delivery_tag=delivery_tag_of(request) or None,
                    broker_db=settings.redis_db_broker,
                    result_db=settings.redis_db_backend,
                    publish=not record.confirms,
                )
            )
            if finish is not None:
                pending = finish.pending
                finish.settle(revoked=_cancelled_first(record, keys, task_id, stored, pending))

        self.ensure(write, ())
        setattr(request, _RETRY_STORED, True)
        faults.point("after_retry", task_id)

    def _meta_value(
        self, task_id: str, result: Any, state: str, traceback: Any, request: Any
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id
        if state == states.SUCCESS and self._returns_plain_json(request):
            try:
                return to_json(meta).decode()
            except PydanticSerializationError:  # not plain data after all: kombu's encoder
                pass
        return self.encode(meta)

    def _returns_plain_json(self, request: Any) -> bool:
        task = self.app.tasks.get(getattr(request, "task", None) or "")
        return bool(getattr(task, PLAIN_JSON_RESULT, False))

    def _record_of_client(self) -> Record:
        client = self.client  # after a fork the backend has a new one
        if self._record is None or self._record.client is not client:
            self._record = Record(client, Confirmation.of(self.app.settings))
        return self._record

    def _store(
        self,
        task_id: str,
        value: Any,
        expires: Any,
        state: str,
        tag: str,
        finish: Finish | None,
    ) -> None:
        settings = self.app.settings
        record = self._record_of_client()
        keys = RecordKeys.of(settings)
        seconds = (
            int(expires.total_seconds()) if hasattr(expires, "total_seconds") else int(expires or 0)
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
                stats=finish.stats if finish else None,
                delivery_tag=tag if ends_delivery else None,
                broker_db=settings.redis_db_broker,
                result_db=settings.redis_db_backend,
                stats_if_revoked=finish.if_revoked if finish else None,
                publish=not confirmed,
            )
        )
        pending = finish is not None and finish.pending
        revoked = _cancelled_first(
            record, keys, task_id, stored, state in states.READY_STATES or pending
        )
        if finish is not None:
            # A folded run counts as what the record holds (see stats_recorder).
            finish.settle(revoked=revoked)
        if revoked and state in states.READY_STATES:
            # A cancel landed as the task finished: the caller saw REVOKED, the statistics
            # counted it so; the worker's log line must say it too.
            note_cancelled_while_finishing(task_id)


def _cancelled_first(
    record: Record, keys: RecordKeys, task_id: str, stored: bool, matters: bool
) -> bool:
    """Whether a write was refused because a cancel's REVOKED got there first (one GET, only
    when the answer ``matters``: a folded run's statistics, or a final state's log line)."""
    return matters and not stored and record.meta_status(keys, task_id) == states.REVOKED
