"""The Celery application factory: queues, routes and the settings long tasks need.

There is no module-level app. :func:`create_celery_app` builds one from a
:class:`~vocalborn_tasks.config.TaskSettings`, registers the built-in tasks and returns it;
the worker entry point (:mod:`vocalborn_tasks.worker`) builds one lazily for the CLI.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from .._connections import sentinel_kwargs
from ..config import QUEUES, TaskSettings
from .transport import FAILOVER_WAIT_OPTION, PREFIX_OPTION, REPLICA_ACKS_OPTION

__all__ = ["VocalbornCelery", "create_celery_app", "queue_for_task"]

#: Task name prefixes and the queue each goes to.
_ROUTES: dict[str, str] = {
    "vocalborn.analyze_audio": "ai_analysis",
    "vocalborn.maintenance.*": "maintenance",
    "vocalborn.health.*": "health",
    "vocalborn.test": "health",
}


def queue_for_task(name: str, default: str = "ai_analysis") -> str:
    """The queue a task name is routed to (the same rule Celery applies)."""
    for pattern, queue in _ROUTES.items():
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return queue
        if name == pattern:
            return queue
    return default


class VocalbornCelery(Celery):  # type: ignore[misc]
    """A Celery app that remembers the settings it was built from.

    Task bodies and signal handlers read ``app.settings`` instead of the environment, so two
    apps with different settings can live in one process (tests do this).
    """

    settings: TaskSettings


def _transport_options(settings: TaskSettings) -> dict[str, Any]:
    """Options of the broker's and the result backend's connections (the sentinel ones are
    added for the broker only: see :func:`_sentinel_options`)."""
    return {
        # Redis re-delivers an unacknowledged message after this long; it must exceed the hard
        # time limit (checked in TaskSettings) or a running task gets a second copy.
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 25,
        "retry_on_timeout": True,
        # Consume ai_analysis before maintenance before health when a worker serves several.
        "queue_order_strategy": "priority",
        # Our transport's wake-up lists live under the deployment's key prefix.
        PREFIX_OPTION: settings.key_prefix,
        # A reservation counts once replicas hold it (transport.Channel._confirmed).
        REPLICA_ACKS_OPTION: settings.replica_acks,
        FAILOVER_WAIT_OPTION: settings.redis_failover_wait_s,
    }


def _sentinel_options(settings: TaskSettings) -> dict[str, Any]:
    """kombu's Sentinel channel options: which master to ask the sentinels for, and how to talk
    to the sentinels themselves (their own credentials, TLS and timeouts, which differ from the
    master's). The result backend builds its pool from the settings instead (backend.py)."""
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": sentinel_kwargs(settings),
    }


def _broker_transport(settings: TaskSettings) -> str:
    name = "SentinelTransport" if settings.uses_sentinel else "Transport"
    return f"vocalborn_tasks.worker.transport:{name}"


def create_celery_app(
    settings: TaskSettings | None = None, *, register: bool = True
) -> VocalbornCelery:
    """Build a configured Celery app.

    Args:
        settings: where to connect and how to behave; ``TaskSettings()`` (environment) if omitted.
        register: register the built-in tasks (analysis, maintenance, health, test) and the
            task definitions of the host modules named by ``TASK_MODULES``.

    Returns:
        The app. Building it opens no connection.
    """
    settings = settings if settings is not None else TaskSettings()
    app = VocalbornCelery("vocalborn_tasks", set_as_current=False)
    app.settings = settings
    transport = _transport_options(settings)
    broker_options = dict(transport)
    if settings.uses_sentinel:
        broker_options.update(_sentinel_options(settings))
    ssl = settings.ssl_options()
    exchange = Exchange("", type="direct")  # type: ignore[no-untyped-call]
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.backend_url,
        # kombu's Redis (or Sentinel) transport with our reservation script (transport.py).
        "broker_transport": _broker_transport(settings),
        "broker_transport_options": broker_options,
        "result_backend_transport_options": dict(transport),
        "visibility_timeout": settings.visibility_timeout_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": settings.redis_connect_timeout_s,
        "redis_socket_connect_timeout": settings.redis_connect_timeout_s,
        "redis_socket_timeout": 120.0,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 25,
        # JSON only: pickle across a network is remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once delivery for long tasks.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # On Redis a running task's message stays reserved across a connection loss (unlike
        # AMQP, nothing requeues it), and its outcome is stored and acknowledged by one script
        # once Redis is back: a broker blip must not kill and re-run every running task.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # A redelivered message whose task already stored SUCCESS (its worker died between
        # storing the result and acknowledging) is not run again.
        "worker_deduplicate_successful_tasks": True,
        # STARTED is stored by the task runtime in the same round trip as the delivery check
        # (tasks/runtime.py); Celery's own tracking would cost one more per task.
        "task_track_started": False,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "result_expires": settings.result_expires,
        "result_extended": False,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_base_sleep_between_retries_ms": 50,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        # Queues and routing.
        "task_queues": tuple(
            Queue(q, exchange, routing_key=q)  # type: ignore[no-untyped-call]
            for q in QUEUES
        ),
        "task_default_queue": "ai_analysis",
        "task_default_exchange": "",
        "task_default_routing_key": "ai_analysis",
        "task_create_missing_queues": True,
        "task_routes": {pattern: {"queue": q, "routing_key": q} for pattern, q in _ROUTES.items()},
        # Worker behaviour.
        "worker_concurrency": settings.celery_worker_concurrency,
        "worker_max_tasks_per_child": settings.celery_worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.celery_worker_max_memory_per_child_kb,
        # Hands a task this worker does not know back to its queue (bounded), for one that
        # does, instead of failing it and logging its body (consumer.py).
        "worker_consumer": "vocalborn_tasks.worker.consumer:Consumer",
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        "worker_enable_soft_shutdown_on_idle": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": _beat_schedule(settings),
        # Two beat processes started by mistake must not send every job twice: a Redis lock.
        "beat_scheduler": "vocalborn_tasks.worker.beat:LockedScheduler",
    }
    if ssl is not None:
        conf["broker_use_ssl"] = ssl
        conf["redis_backend_use_ssl"] = ssl
    app.conf.update(conf)
    # Our Redis backend: one script per state (see backend.py). Celery
    # takes a backend class by "module:Class+url"; conf.result_backend keeps the plain URL.
    app.backend_cls = f"vocalborn_tasks.worker.backend:VocalbornRedisBackend+{settings.backend_url}"
    from .heartbeat import HeartbeatStep

    app.steps["worker"].add(HeartbeatStep)
    from .result_logging import HideResultsStep

    app.steps["worker"].add(HideResultsStep)
    from .warmup import WarmImportsStep

    app.steps["worker"].add(WarmImportsStep)
    from .result_logging import StartupChecksStep

    app.steps["worker"].add(StartupChecksStep)
    from .stats_recorder import install_stats

    install_stats(app)
    if register:
        from .runtime import register_builtin_tasks, register_task_modules

        register_builtin_tasks(app)
        register_task_modules(app, settings.task_modules)
    return app


def _beat_schedule(settings: TaskSettings) -> dict[str, dict[str, Any]]:
    schedule = _default_beat_schedule(settings)
    for name, entry in settings.beat_schedule.items():
        if entry is None:
            schedule.pop(name, None)
            continue
        queue = entry.queue or queue_for_task(entry.task)
        schedule[name] = {
            "task": entry.task,
            "schedule": entry.every_s,
            "kwargs": dict(entry.kwargs),
            "options": {"queue": queue, "expires": entry.every_s},
        }
    return schedule


def _default_beat_schedule(settings: TaskSettings) -> dict[str, dict[str, Any]]:
    return {
        "vocalborn-maintenance-cleanup": {
            "task": "vocalborn.maintenance.cleanup",
            "schedule": settings.maintenance_interval_s,
            "options": {"queue": "maintenance", "expires": settings.maintenance_interval_s},
        },
        "vocalborn-health-check": {
            "task": "vocalborn.health.check",
            "schedule": settings.health_interval_s,
            "options": {"queue": "health", "expires": settings.health_interval_s},
        },
    }
