"""Worker and beat entry points, importable without side effects.

``vocalborn-tasks worker`` and ``celery -A vocalborn_tasks.worker worker`` both run a worker.
The second form needs a module attribute named ``app``; it is built on first access (PEP 562
``__getattr__``) from the environment, so importing this module connects to nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..config import QUEUES, TaskSettings
from .factory import VocalbornCelery, create_celery_app

__all__ = ["prepare_worker_environment", "run_beat", "run_worker", "worker_argv"]

logger = logging.getLogger(__name__)

_lazy_app: VocalbornCelery | None = None


def __getattr__(name: str) -> Any:
    """Build the app the ``celery -A vocalborn_tasks.worker`` command looks for, on demand."""
    global _lazy_app
    if name in ("app", "celery"):
        if _lazy_app is None:
            prepare_worker_environment()
            _lazy_app = create_celery_app(TaskSettings())
        return _lazy_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prepare_worker_environment() -> None:
    """Make SIGTERM a soft shutdown: running tasks get a grace period, then are requeued.

    Celery's default SIGTERM waits for every running task to finish, which for minutes-long
    analyses outlives any orchestrator's grace period and ends in SIGKILL. Remapping SIGTERM to
    Celery's soft (then cold) shutdown gives tasks ``worker_soft_shutdown_timeout`` seconds and
    then hands them back to the queue (acks late), where another worker picks them up.
    """
    if "billiard.common" in sys.modules:
        if os.environ.get("REMAP_SIGTERM") != "SIGQUIT":
            logger.warning(
                "SIGTERM will wait for running tasks to finish: set REMAP_SIGTERM=SIGQUIT in the "
                "worker's environment (vocalborn-tasks worker does it for you)"
            )
        return
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")


def worker_argv(
    settings: TaskSettings,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    pool: str | None = None,
    hostname: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``celery worker`` arguments our defaults amount to (also useful for process managers)."""
    argv = [
        "worker",
        f"--loglevel={settings.celery_log_level}",
        f"--queues={','.join(queues or QUEUES)}",
        # Gossip, mingle and events cost CPU and commands on every worker and buy nothing here:
        # we never rely on them (health checks use real round trips).
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if pool is not None:
        argv.append(f"--pool={pool}")
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    argv.extend(extra)
    return argv


def run_worker(
    settings: TaskSettings | None = None,
    *,
    hostname: str | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run a worker in this process until it is stopped (blocks). See :func:`worker_argv`.

    The node name (``hostname``, Celery's ``-n``; default ``celery-<pid>@<host>``) is taken in
    Redis before the worker consumes (:mod:`.names`), then ``announce(name)`` is called.

    Raises:
        ConfigurationError: a live worker already holds ``hostname``.
    """
    from .names import release_node_name, take_node_name

    prepare_worker_environment()
    settings = settings if settings is not None else TaskSettings()
    name = take_node_name(settings, hostname)
    try:
        if announce is not None:
            announce(name)
        app = create_celery_app(settings)
        # --quiet: no Celery banner (it offers a -E our command does not have); the CLI says
        # what it starts in its own words.
        app.worker_main(["--quiet", *worker_argv(settings, hostname=name, **options)])
    finally:
        release_node_name(settings, name)


def run_beat(settings: TaskSettings | None = None, *, schedule_file: str | None = None) -> None:
    """Run celery beat with the library's schedule in this process (blocks)."""
    settings = settings if settings is not None else TaskSettings()
    app = create_celery_app(settings)
    argv = ["beat", f"--loglevel={settings.celery_log_level}"]
    if schedule_file is not None:
        argv.append(f"--schedule={schedule_file}")
    app.start(argv)
