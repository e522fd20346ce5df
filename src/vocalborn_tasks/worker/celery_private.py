"""Every private (or undocumented) name of Celery and kombu the worker side relies on.

Borrowed internals break silently on upgrade, so they are quarantined here: :data:`BORROWED`
names each one, the module of ours that uses it and why. ``tests/unit/test_celery_private.py``
checks that each still exists with the expected shape, and finds the borrowed names in the
source itself (every ``_name`` of Celery's or kombu's our worker code reads, writes or
overrides, every name it imports from them, every attribute of their internal modules): a
name found there and missing here fails the test. pyproject pins Celery and kombu to the minor
versions CI tests (``>=5.7,<5.8``); raise the pin only after that test passes.

Undocumented attributes of objects Celery hands us (``pool.info``, ``queues.consume_from``)
cannot be found by reading our source, so they are read here, by the helpers below, and
nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import states

__all__ = [
    "BORROWED",
    "PRIVATE_NAMES",
    "PUBLIC_MODULES",
    "Borrowed",
    "consumed_queues",
    "delivery_tag_of",
    "held_requests",
    "pool_child_pids",
    "request_counts",
    "result_expiry",
    "running_delivery_tags",
    "running_task_ids",
    "say_shutdown_in_our_words",
    "terminate_running",
    "worker_stopping",
]


@dataclass(frozen=True, slots=True)
class Borrowed:
    """One borrowed name: ``module`` imported, then ``name`` (dotted) looked up on it."""

    module: str
    name: str
    #: Our module(s) that use it.
    used_in: str
    why: str
    #: Used by value, not by name (a copied constant, a format's argument names): the test
    #: compares the value instead of finding the name in our source.
    implicit: bool = False

    @property
    def attribute(self) -> str:
        """The last part of the name (what our code writes after the dot)."""
        return self.name.rsplit(".", 1)[-1]


logger = logging.getLogger(__name__)

_KR = "kombu.transport.redis"

#: The table. Instance attributes (set in the owner's ``__init__``, not on the class) are
#: checked against the owner's source by the test.
BORROWED: tuple[Borrowed, ...] = (
    # --- kombu's Redis transport: our consume loop (transport.py) ---
    Borrowed(_KR, "Channel", "transport", "subclassed: atomic reservation, wake-up lists"),
    Borrowed(_KR, "QoS", "transport", "subclassed: reservation and folded acks"),
    Borrowed(_KR, "Transport", "transport", "subclassed: drops foreign queue entries"),
    Borrowed(_KR, "Channel._brpop_start", "transport", "overridden: our reserve / wake-up BRPOP"),
    Borrowed(_KR, "Channel._brpop_read", "transport", "overridden: reads the reserve reply"),
    Borrowed(_KR, "Channel._put", "transport", "overridden: a wake-up token per publish"),
    Borrowed(_KR, "Channel._do_restore_message", "transport", "overridden: a token per restore"),
    Borrowed(_KR, "Channel._create_client", "transport", "overridden: one client per pool"),
    Borrowed(
        _KR,
        "Channel._connparams",
        "transport",
        "overridden: the event loop's connections never retry behind kombu's back",
    ),
    Borrowed(_KR, "Channel._queue_cycle", "transport", "queue order: consume() and rotate()"),
    Borrowed(_KR, "Channel._q_for_pri", "transport", "priority list names"),
    Borrowed(_KR, "Channel._lookup", "transport", "routing on restore"),
    Borrowed(_KR, "Channel._get_message_priority", "transport", "priority list on publish"),
    Borrowed(_KR, "Channel._flush_brpop_reauth", "transport", "kept after each read"),
    Borrowed(_KR, "Channel._in_poll", "transport", '"command in flight" flag, set and cleared'),
    Borrowed(_KR, "Channel._brpop_sent_at", "transport", "kombu's stale-socket check"),
    Borrowed(
        _KR,
        "Channel.sep",
        "record.keys",
        "priority list separator, copied as record.keys.PRIORITY_SEP (caller side: no kombu)",
        implicit=True,
    ),
    Borrowed(
        _KR,
        "Channel.priority_steps",
        "record.keys",
        "priority list steps, copied as record.keys.PRIORITY_STEPS",
        implicit=True,
    ),
    Borrowed(_KR, "Channel.brpop_timeout", "transport", "the idle BRPOP's timeout"),
    Borrowed(_KR, "QoS.append", "transport", "overridden: reservation"),
    Borrowed(_KR, "QoS.ack", "transport", "overridden: acks folded into the next reserve"),
    Borrowed(_KR, "QoS.restore_unacked", "transport", "overridden: keep running tasks reserved"),
    Borrowed(_KR, "QoS._delivered", "transport", "the tags restore_unacked hands back"),
    Borrowed(_KR, "Channel.unacked_key", "record.keys", "the reserved hash's name", implicit=True),
    Borrowed(_KR, "Channel.unacked_index_key", "record.keys", "its index's name", implicit=True),
    Borrowed(_KR, "Transport._deliver", "transport", "overridden: drops foreign entries"),
    Borrowed("kombu.transport.virtual", "QoS.append", "transport", "in-memory bookkeeping only"),
    Borrowed("kombu.transport.virtual", "QoS.ack", "transport", "in-memory bookkeeping only"),
    # --- Celery's Redis result backend (backend.py) ---
    Borrowed("celery.backends.redis", "RedisBackend._store_result", "backend", "the store script"),
    Borrowed(
        "celery.backends.redis",
        "RedisBackend._get_result_meta",
        "backend",
        "Celery's meta of a state",
    ),
    Borrowed("celery.backends.redis", "RedisBackend.ensure", "backend", "retry on errors"),
    Borrowed(
        "celery.backends.redis",
        "RedisBackend._create_client",
        "backend",
        "overridden: the client's pool (through the sentinels; failover-aware connections)",
    ),
    Borrowed(
        "celery.backends.redis",
        "RedisBackend._params_from_url",
        "backend",
        "overridden: a sentinel:// URL list names no server (the settings build the pool)",
    ),
    Borrowed(
        "celery.backends.redis",
        "RedisBackend.failure_expires",
        "celery_private",
        "the TTL of a FAILURE (result_expiry)",
    ),
    # --- the worker's state (heartbeat, transport, via this module) ---
    Borrowed("celery.worker.state", "active_requests", "heartbeat", "the tasks running now"),
    Borrowed("celery.worker.state", "reserved_requests", "heartbeat", "the tasks held"),
    Borrowed("celery.worker.state", "all_total_count", "heartbeat", "processed count"),
    Borrowed("celery.worker.state", "should_stop", "transport", "a shutdown, not a loss"),
    Borrowed("celery.worker.state", "should_terminate", "transport", "a shutdown, not a loss"),
    Borrowed(
        "celery.worker.state",
        "revoked",
        "celery_private",
        "ids a terminate cancelled: Celery then reports the request as revoked, as its own "
        "revoke command does",
    ),
    Borrowed(
        "celery.worker.request",
        "Request.terminate",
        "celery_private",
        "signals the pool child running a cancelled task (revoke(terminate=True) without a "
        "broadcast)",
    ),
    Borrowed(
        "celery.worker.consumer",
        "Consumer",
        "consumer",
        "subclassed (worker_consumer): unknown tasks are handed back, not failed",
    ),
    Borrowed(
        "celery.utils.objects",
        "Bunch",
        "consumer",
        "the request-like object Celery's own unknown-task path stores a FAILURE for",
    ),
    Borrowed(
        "celery.utils.nodenames",
        "default_nodename",
        "names",
        "Celery's default node name, which our unique default extends",
    ),
    Borrowed(
        "celery.utils.nodenames",
        "host_format",
        "names",
        "expands %h/%n in a node name as ``celery worker -n`` does",
    ),
    Borrowed(
        "celery.worker.consumer.consumer",
        "Consumer.on_unknown_task",
        "consumer",
        "overridden: a task this worker does not know goes back to its queue (bounded), its "
        "body never logged",
    ),
    Borrowed("celery.concurrency.base", "BasePool.info", "heartbeat", "pool child pids (RSS)"),
    Borrowed("celery.app.amqp", "Queues.consume_from", "heartbeat", "the queues consumed"),
    Borrowed(
        "celery.beat",
        "Scheduler._heap",
        "beat",
        "reset when leadership changes, so the schedule is rebuilt from Redis",
    ),
    # --- logging (result_logging, cli) ---
    Borrowed(
        "celery.app.trace",
        "LOG_SUCCESS",
        "result_logging",
        "its return_value argument is what we hide from worker logs",
        implicit=True,
    ),
    Borrowed(
        "celery.app.trace",
        "log_policy_expected",
        "result_logging",
        "the description of the line logged for a task's ``throws``, which we drop",
        implicit=True,
    ),
    Borrowed(
        "celery.apps.worker",
        "safe_say",
        "cli",
        "the shutdown messages, in our words (Celery's mention Ctrl+C after a SIGTERM)",
    ),
)

#: (module, dotted name) pairs of :data:`BORROWED` (the form the tests parametrize over).
PRIVATE_NAMES: tuple[tuple[str, str], ...] = tuple((b.module, b.name) for b in BORROWED)

#: Celery/kombu modules whose public (no underscore) names are their documented API; every
#: name used from any other of their modules is borrowed and must be in :data:`BORROWED`.
PUBLIC_MODULES: frozenset[str] = frozenset(
    {
        "celery",
        "celery.beat",
        "celery.bootsteps",
        "celery.exceptions",
        "celery.signals",
        "celery.states",
        "celery.backends.redis",
        "kombu.entity",
        "kombu.transport.redis",
        "kombu.transport.virtual",
    }
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


def pool_child_pids(pool: Any) -> list[int]:
    """The pids of a worker pool's child processes ([] for a pool without children)."""
    if pool is None:
        return []
    try:
        return [int(p) for p in pool.info.get("processes", [])]
    except Exception:  # a pool shutting down: the heartbeat must go on without the RSS
        return []


def consumed_queues(app: Any) -> list[str]:
    """The queues this worker consumes (its ``-Q``, else every queue of the app), sorted."""
    queues = app.amqp.queues
    return sorted(queues.consume_from or queues)


def request_counts() -> tuple[int, int, int]:
    """(running, held, processed since start) of this worker process."""
    from celery.worker import state

    return len(state.active_requests), len(state.reserved_requests), state.all_total_count[0]


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
