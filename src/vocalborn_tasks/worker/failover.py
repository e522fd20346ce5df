"""How the worker side tells a failover from a bug, and turns it into a reconnect.

When Sentinel moves the master, the clients still connected to the old one do not get a
connection error: they get *answers*. redis-py raises most of them as plain ``ResponseError``,
which kombu counts as a channel error and Celery as "Unrecoverable error" (the worker exits);
in a script or the result backend they surface as a failed task. Each of these means "this
server is not, or no longer, a master you can write to", and the cure is the same: drop the
connection and ask the sentinels again.

======================  ===========================================================
reply                   when
======================  ===========================================================
``UNBLOCKED``           a blocked ``BRPOP`` on a master being demoted
``READONLY``            a write (or a script) on a demoted master, i.e. a replica
``MASTERDOWN``          a replica that lost its master, ``replica-serve-stale-data no``
``LOADING``             a server still loading its data set (already a ConnectionError)
``NOREPLICAS``          ``min-replicas-to-write`` not met: a master cut off from its
                        replicas, or its replicas down
``ERR WAIT cannot be    a ``WAIT`` (confirming a write) on a demoted master; read as
used with replica``     ``READONLY``
======================  ===========================================================

The connection classes below raise these as :class:`FailoverError` (a redis-py
``ConnectionError``, so every retry loop that covers an outage covers this too: Celery's
result backend, the record's confirmed writes, the heartbeat's next beat) after disconnecting,
so the next command connects again and, with sentinels, looks the master up first.
``NOREPLICAS`` is the subclass :class:`NoReplicasError`. The consume loop reads either as
"nothing reserved now" (transport.py). Every Redis client the worker side builds uses them:
kombu's channels, the result backend, the heartbeat, beat and the name lock, and so the task
runtime too, which runs its scripts on the backend's client.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import redis
import redis.sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .._connections import Database, sync_pool
from ..record.confirm import FAILOVER_REPLY_CODES

if TYPE_CHECKING:
    from ..config import TaskSettings

__all__ = [
    "FAILOVER_CODES",
    "FailoverConnection",
    "FailoverError",
    "FailoverSSLConnection",
    "NoReplicasError",
    "SentinelFailoverConnection",
    "SentinelFailoverSSLConnection",
    "connection_class",
    "failover_code",
    "worker_redis",
]

#: Error replies that mean "reconnect (through the sentinels)", not "bug".
FAILOVER_CODES: frozenset[str] = FAILOVER_REPLY_CODES

# Redis 6 wraps an error raised inside a script: "ERR Error running script ... -READONLY ...".
_IN_SCRIPT = re.compile(r"-(" + "|".join(sorted(FAILOVER_CODES)) + r")\b")
_WAIT_ON_REPLICA = "WAIT cannot be used with replica instances"


class FailoverError(RedisConnectionError):
    """The server answered as one that is not (or no longer) a writable master.

    A ``ConnectionError``: every retry loop that covers an outage covers this too.
    ``code`` is the server's error code (``READONLY``...).
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class NoReplicasError(FailoverError):
    """``NOREPLICAS``: the master refuses writes until enough replicas are connected."""


def failover_code(exc: BaseException) -> str | None:
    """The failover code of a server error reply (see the module table), or None."""
    if not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    code = getattr(exc, "status_code", None) or text.split(" ", 1)[0]
    if code in FAILOVER_CODES:
        return str(code)
    if code == "ERR" and text.removeprefix("ERR ").startswith(_WAIT_ON_REPLICA):
        return "READONLY"
    if code == "ERR" and "script" in text:
        found = _IN_SCRIPT.search(text)
        if found is not None:
            return found.group(1)
    return None


def _mapped(exc: ResponseError, code: str, where: str) -> FailoverError:
    cls = NoReplicasError if code == "NOREPLICAS" else FailoverError
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not detail.startswith(code):
        detail = f"{code} {detail}"
    return cls(f"{where} answered {detail}", code)


class _FailoverMixin:
    """``read_response`` that turns a failover reply into :class:`FailoverError`.

    Disconnects first: the replies still due on this socket (a pipeline's) are dropped with
    it, and the next command connects again (asking the sentinels, on a sentinel pool).
    """

    host: str
    port: int
    #: How often this connection was dropped: a ``WAIT`` on it confirms only the writes made
    #: since (transport.py holds a reservation for confirmation on one connection).
    vb_drops = 0

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self.vb_drops += 1
        super().disconnect(*args, **kwargs)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            code = failover_code(exc)
            if code is None:
                raise
            where = f"{self.host}:{self.port}"
            self.disconnect()
            raise _mapped(exc, code, where) from exc


class FailoverConnection(_FailoverMixin, redis.Connection):
    """A TCP connection to one address that reports a failover as a connection error."""


class FailoverSSLConnection(_FailoverMixin, redis.SSLConnection):
    """The TLS twin of :class:`FailoverConnection`."""


class SentinelFailoverConnection(_FailoverMixin, redis.sentinel.SentinelManagedConnection):
    """A connection to the sentinels' master that reports a failover as a connection error
    (redis-py's own class does so for ``READONLY`` only)."""


class SentinelFailoverSSLConnection(_FailoverMixin, redis.sentinel.SentinelManagedSSLConnection):
    """The TLS twin of :class:`SentinelFailoverConnection`."""


def connection_class(settings: TaskSettings) -> type[redis.Connection]:
    """The connection class for a worker-side client of ``settings`` (sentinel? TLS?)."""
    if settings.uses_sentinel:
        if settings.uses_tls:
            return SentinelFailoverSSLConnection
        return SentinelFailoverConnection
    return FailoverSSLConnection if settings.uses_tls else FailoverConnection


def worker_redis(settings: TaskSettings, db: Database, *, max_connections: int = 4) -> redis.Redis:
    """A synchronous client for the worker's own bookkeeping (heartbeat, reaper, beat, names).

    :func:`vocalborn_tasks._connections.sync_redis` with the failover-aware connections:
    through the sentinels when they are configured, with the settings' TLS and timeouts.
    """
    pool = sync_pool(
        settings,
        db,
        max_connections=max_connections,
        connection_class=connection_class(settings),
        **settings.redis_client_kwargs(),
    )
    client: redis.Redis = redis.Redis.from_pool(pool)
    return client
