"""Every private (or undocumented) name of Celery and kombu the worker side relies on.

Borrowed internals break silently on upgrade, so they are quarantined here: the list below
names each one, the module that uses it and why, and ``tests/unit/test_celery_private.py``
checks that each still exists with the expected shape. pyproject pins Celery and kombu to the
minor versions CI tests (``>=5.7,<5.8``); raise the pin only after that test passes.

- ``kombu.transport.redis.Channel._brpop_start`` (transport): our consume loop (reserve)
- ``kombu.transport.redis.Channel._brpop_read`` (transport): reads the reserve reply
- ``kombu.transport.redis.Channel._put`` (transport): wake-up token per publish
- ``kombu.transport.redis.Channel._do_restore_message`` (transport): wake-up token per restore
- ``kombu.transport.redis.Channel._create_client`` (transport): one client per pool
- ``kombu.transport.redis.Channel._queue_cycle`` (transport): queue order (priority)
- ``kombu.transport.redis.Channel._q_for_pri`` (transport): priority list names
- ``kombu.transport.redis.Channel._lookup`` (transport): routing on restore
- ``kombu.transport.redis.Channel._get_message_priority`` (transport): priority list on publish
- ``kombu.transport.redis.Channel._flush_brpop_reauth`` (transport): kept after each read
- ``kombu.transport.redis.Channel._in_poll`` (transport): "command in flight" flag
- ``kombu.transport.redis.Channel._brpop_sent_at`` (transport): kombu's stale-socket check
- ``kombu.transport.redis.QoS.append / ack`` (transport): reservation, folded acks
- ``kombu.transport.virtual.QoS.append / ack`` (transport): in-memory bookkeeping only
- ``kombu.transport.redis.Transport._deliver`` (transport): drops foreign entries
- ``celery.backends.redis.RedisBackend._store_result`` (backend): the store script
- ``celery.backends.redis.RedisBackend._get_result_meta`` (backend): Celery's meta of a state
- ``celery.backends.redis.RedisBackend.failure_expires`` (backend, via this module): the TTL of
  a FAILURE
- ``celery.worker.state.active_requests/reserved_requests`` (heartbeat): the tags a live
  worker holds
- ``celery.worker.state.all_total_count`` (heartbeat): processed count
- ``celery.worker.state.revoked`` (heartbeat, via this module): ids a terminate cancelled, so
  Celery reports a terminated request as revoked, as its own ``revoke`` command does
- ``celery.worker.request.Request.terminate`` (heartbeat, via this module): signals the pool
  child running a cancelled task (as ``revoke(terminate=True)`` does through a broadcast)
- ``celery.worker.consumer.Consumer.on_unknown_task`` (consumer): what a worker does with a
  task it does not know; ours hands it back to its queue (bounded) and never logs the body
- ``celery.worker.state.should_stop/should_terminate`` (transport, via this module): tells a
  shutdown from a connection loss
- ``kombu.transport.redis.QoS.restore_unacked`` (transport): keep running tasks reserved
- ``celery.app.trace.LOG_SUCCESS`` (result_logging): its ``return_value`` argument is what
  we hide from worker logs
- ``celery.app.trace.log_policy_expected`` (result_logging): the ``description`` of the line
  Celery logs for an error listed in a task's ``throws``, which we drop (the runtime logs a
  WARNING with the code instead)
- ``request.properties["delivery_tag"]`` (backend, via this module): the message to
  acknowledge
- ``celery.apps.worker.safe_say`` (cli, via this module): the shutdown messages, said in our
  own words (Celery's mention Ctrl+C where a process manager sent SIGTERM)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import states

__all__ = [
    "PRIVATE_NAMES",
    "delivery_tag_of",
    "held_requests",
    "result_expiry",
    "running_delivery_tags",
    "running_task_ids",
    "say_shutdown_in_our_words",
    "terminate_running",
    "worker_stopping",
]

logger = logging.getLogger(__name__)

#: (module, dotted attribute) pairs checked by the test (see the table above).
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("kombu.transport.redis", "Channel._brpop_start"),
    ("kombu.transport.redis", "Channel._brpop_read"),
    ("kombu.transport.redis", "Channel._put"),
    ("kombu.transport.redis", "Channel._do_restore_message"),
    ("kombu.transport.redis", "Channel._create_client"),
    ("kombu.transport.redis", "Channel._q_for_pri"),
    ("kombu.transport.redis", "Channel._lookup"),
    ("kombu.transport.redis", "Channel._get_message_priority"),
    ("kombu.transport.redis", "Channel._flush_brpop_reauth"),
    ("kombu.transport.redis", "Channel.priority_steps"),
    ("kombu.transport.redis", "Channel.sep"),
    ("kombu.transport.redis", "QoS.append"),
    ("kombu.transport.redis", "QoS.ack"),
    ("kombu.transport.redis", "QoS.unacked_key"),
    ("kombu.transport.redis", "QoS.unacked_index_key"),
    ("kombu.transport.redis", "Transport._deliver"),
    ("kombu.transport.virtual", "QoS.append"),
    ("kombu.transport.virtual", "QoS.ack"),
    ("celery.backends.redis", "RedisBackend._store_result"),
    ("celery.backends.redis", "RedisBackend._get_result_meta"),
    ("celery.backends.redis", "RedisBackend.ensure"),
    ("celery.backends.redis", "RedisBackend.supports_failure_expires"),
    ("celery.worker.state", "active_requests"),
    ("celery.worker.state", "reserved_requests"),
    ("celery.worker.state", "all_total_count"),
    ("celery.worker.state", "revoked"),
    ("celery.worker.request", "Request.terminate"),
    ("celery.worker.consumer.consumer", "Consumer.on_unknown_task"),
    ("celery.worker.state", "should_stop"),
    ("celery.worker.state", "should_terminate"),
    ("kombu.transport.redis", "QoS.restore_unacked"),
    ("celery.app.trace", "LOG_SUCCESS"),
    ("celery.app.trace", "log_policy_expected"),
    ("celery.apps.worker", "safe_say"),
)


def delivery_tag_of(request: Any) -> str:
    """The delivery tag of the message a request came in ('' when there is none)."""
    properties = getattr(request, "properties", None)
    if isinstance(properties, Mapping):
        tag = properties.get("delivery_tag")
        if isinstance(tag, str):
            return tag
    return ""


def result_expiry(backend: Any, state: str) -> Any:
    """How long a stored state lives: ``result_failure_expires`` for failures (Celery 5.7)."""
    if state == states.FAILURE:
        return backend.failure_expires
    return backend.expires


def worker_stopping() -> bool:
    """Whether this worker process is shutting down (warm, soft or cold)."""
    from celery.worker import state

    return any(flag not in (None, False) for flag in (state.should_stop, state.should_terminate))


def held_requests() -> list[Any]:
    """The requests this worker holds: running, then reserved (copies: other threads mutate)."""
    from celery.worker import state

    return [*list(state.active_requests), *list(state.reserved_requests)]


def running_delivery_tags() -> set[str]:
    """Delivery tags of the tasks this worker is running now."""
    from celery.worker import state

    return {
        str(r.message.delivery_tag)
        for r in list(state.active_requests)
        if getattr(r, "message", None) is not None
    }


def running_task_ids() -> set[str]:
    """Ids of the tasks this worker is running now."""
    from celery.worker import state

    return {str(r.id) for r in list(state.active_requests)}


def terminate_running(task_ids: set[str], pool: Any) -> list[str]:
    """Stop this worker's running copies of ``task_ids``; return the ids hit.

    What Celery's ``revoke(terminate=True)`` control command does in the worker
    (celery.worker.control), without the broadcast: the ids join the worker's revoked set (so
    the request reports REVOKED, not a failure) and each running request's pool child gets
    billiard's termination signal. That is SIGQUIT under ``REMAP_SIGTERM=SIGQUIT`` (which our
    workers run with): pool children *ignore* SIGTERM then, so the ``signal="SIGTERM"`` the
    caller used to broadcast left the body running to its end. Called from the heartbeat
    thread: ``Request.terminate`` only sends a signal, or, for a request whose child is not
    known yet, records it for when it is.
    """
    from celery.worker import state

    hit: list[str] = []
    for request in list(state.active_requests):
        if request.id not in task_ids:
            continue
        state.revoked.add(request.id)
        try:
            request.terminate(pool)  # signal None: billiard's TERM_SIGNAME
        except NotImplementedError:  # a pool that cannot (solo): the next progress report stops it
            logger.info(
                "task %s: this pool cannot terminate; it stops at its next report", request.id
            )
        hit.append(str(request.id))
    return hit


def say_shutdown_in_our_words(soft_shutdown_s: float) -> None:
    """Replace Celery's shutdown messages with what ``vocalborn-tasks worker`` actually does.

    Under ``REMAP_SIGTERM=SIGQUIT`` Celery answers SIGTERM with "Hitting Ctrl+C again will
    terminate all running tasks!", which confuses an operator who never pressed Ctrl+C.
    """
    import sys

    import celery.apps.worker as celery_worker

    original = celery_worker.safe_say
    grace = f"{soft_shutdown_s:g} s"
    words = {
        "Hitting Ctrl+C again will terminate all running tasks": (
            f"worker: stopping; running tasks get {grace} to finish, then go back to their "
            "queue (signal again: put them back now)"
        ),
        "Hitting Ctrl+C again will initiate cold shutdown": (
            "worker: stopping once running tasks finish (Ctrl+C again: give them "
            f"{grace}, then put them back on their queue)"
        ),
        "Waiting gracefully for cold shutdown to complete": (
            "worker: putting running tasks back on their queue, then stopping"
        ),
        "Warm shutdown (MainProcess)": "worker: shutting down (waiting for running tasks)",
        "Cold shutdown (MainProcess)": "worker: shutting down",
    }

    def say(msg: str, f: Any = sys.__stderr__) -> None:
        text = str(msg)
        ours = next((mine for theirs, mine in words.items() if theirs in text), text)
        original(ours, f)

    celery_worker.safe_say = say
