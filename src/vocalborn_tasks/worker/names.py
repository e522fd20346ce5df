"""A worker's node name: unique by default, refused when a live worker already holds it.

Celery names every worker ``celery@<host>``: two workers started on one machine without ``-n``
share a name, and so a heartbeat hash, and each one's beat hides the tasks the other runs from
the dead-worker reaper, which hands them back to the queue while they run (issue 16). So the
default name carries the main process id, ``celery-<pid>@<host>``, and a name given with ``-n``
is taken atomically before the worker consumes: a second worker under a live name stops with
one line instead of running its peer's tasks twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

import redis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import redact_url
from ..errors import ConfigurationError
from ..record import RecordKeys
from ..record.workers import NameHolder, release_worker_name, take_worker_name
from .failover import worker_redis

if TYPE_CHECKING:
    from ..config import TaskSettings

__all__ = ["default_node_name", "expand_node_name", "release_node_name", "take_node_name"]

logger = logging.getLogger(__name__)

#: How long a name is held before the first heartbeat renews it (a slow start must not lose it).
_STARTUP_HOLD_S = 60.0


def default_node_name(pid: int | None = None, host: str | None = None) -> str:
    """``celery-<pid>@<host>``: unique per worker process on a machine."""
    return f"celery-{pid if pid is not None else os.getpid()}@{host or socket.gethostname()}"


def expand_node_name(hostname: str | None) -> str:
    """The node name a worker started with ``-n hostname`` runs under (Celery's ``%h``, ``%n``,
    ``%d`` expanded; a name without ``@`` gets ``@<host>``); the default when None."""
    if not hostname:
        return default_node_name()
    from celery.utils.nodenames import default_nodename, host_format

    return str(host_format(default_nodename(hostname)))


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def take_node_name(settings: TaskSettings, hostname: str | None) -> str:
    """Take the worker's node name in Redis before it starts consuming; return it.

    An explicit name held by a live worker is refused. A default name is ours unless PID
    namespaces (containers sharing a host name) make two workers' ids equal; then a random
    suffix is added. A holder on this machine whose process is gone (a crash, restarted at
    once by a process manager) is replaced without waiting for its heartbeat to expire. While
    Redis is unreachable this waits, like the worker itself would.

    Raises:
        ConfigurationError: ``hostname`` is held by a live worker.
    """
    explicit = bool(hostname)
    name = expand_node_name(hostname)
    keys = RecordKeys.of(settings)
    pid = os.getpid()
    machine = socket.gethostname()
    ttl = max(settings.worker_dead_after_s, _STARTUP_HOLD_S)
    client = worker_redis(settings, "backend", max_connections=1)
    pause = 0.1
    try:
        while True:
            try:
                holder = take_worker_name(client, keys, name, pid=pid, machine=machine, ttl_s=ttl)
                if holder is not None and _stale(holder, machine, pid):
                    holder = take_worker_name(
                        client,
                        keys,
                        name,
                        pid=pid,
                        machine=machine,
                        ttl_s=ttl,
                        stale_pid=holder.pid,
                    )
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # A wrong password is not an outage, but like Celery's own connection loop the
                # worker stays up and retries (a secret being rotated), saying which it is.
                problem = (
                    "refused our credentials (check REDIS_PASSWORD/REDIS_USERNAME)"
                    if isinstance(exc, AuthenticationError)
                    else f"unavailable ({exc})"
                )
                logger.warning(
                    "worker name: Redis at %s %s; retrying in %.1f s",
                    ";".join(redact_url(url) for url in settings.backend_url.split(";")),
                    problem,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            if holder is None:
                return name
            if explicit:
                where = f"pid {holder.pid} on {holder.machine}" if holder.machine else "a worker"
                raise ConfigurationError(
                    f"worker name {name} is held by a live worker ({where}): give this one "
                    "another -n, or stop that one first"
                )
            name = default_node_name(pid=pid, host=machine).replace(
                "@", f"-{secrets.token_hex(3)}@", 1
            )
    finally:
        client.close()


def _stale(holder: NameHolder, machine: str, pid: int) -> bool:
    return (
        holder.machine == machine
        and holder.pid is not None
        and holder.pid != pid
        and _process_gone(holder.pid)
    )


def release_node_name(settings: TaskSettings, name: str) -> None:
    """Give the name back if this process still holds it (best effort: its TTL frees it too)."""
    client = worker_redis(settings, "backend", max_connections=1)
    try:
        release_worker_name(client, RecordKeys.of(settings), name, pid=os.getpid())
    except redis.RedisError as exc:
        logger.debug("worker name %s not released: %s", name, exc)
    finally:
        client.close()
