"""How every part of the library reaches the server: one address, or the sentinels' master.

One function per client kind (asyncio, synchronous, dedicated pub/sub connections), each taking
the settings and which database (``broker`` or ``backend``). With ``REDIS_SENTINELS`` set, a
client asks the sentinels for the master's address whenever it (re)connects, so a failover
costs its callers a reconnect, not a restart. Both kinds of pool *block* when all their
connections are busy instead of raising "Too many connections"; redis-py has no blocking
Sentinel pool, so the two are composed here (the Sentinel pool's address lookup, the blocking
pool's queueing).
"""

# redis-py's sentinel module is unannotated.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import asyncio
from functools import cache
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel as syncsentinel
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import TaskSettings

__all__ = [
    "Database",
    "async_pool",
    "async_sentinel_client",
    "cancel_safe",
    "database",
    "sentinel_kwargs",
    "sync_pool",
]

#: Which of the deployment's two databases a client talks to.
Database = Literal["broker", "backend"]


def database(settings: TaskSettings, db: Database) -> int:
    """The database number of ``db``."""
    return settings.redis_db_broker if db == "broker" else settings.redis_db_backend


class _CancelSafeTimeouts:
    """A ``redis.asyncio`` connection whose socket timeout never loses a cancellation.

    redis-py bounds each write with ``asyncio.wait_for``. On Python 3.11 ``wait_for`` returns
    the write's result when a cancellation lands as the write completes, and the cancellation
    is gone (CPython gh-86296, fixed in 3.12): a cancelled call went on as if nothing had
    happened. ``Monitor.health()`` lost 16 of 60 cancels in a loop, ``vocalborn-tasks
    monitor`` ignored Ctrl+C once in 60 (one cause of a flaky pipe test), and a host's request
    timeout around a TaskManager call could be lost the same way. The connection below runs
    with no socket timeout of its own; each write and each read is bounded here with
    ``asyncio.timeout``, which keeps cancellations, and a timeout still drops the connection
    and raises redis-py's ``TimeoutError``.
    """

    _io_timeout: float | None

    def __init__(self, *args: Any, socket_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, socket_timeout=None, **kwargs)  # type: ignore[call-arg]
        self._io_timeout = socket_timeout

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await self._bounded(
            "writing to",
            super().send_packed_command(command, check_health),  # type: ignore[misc]
        )

    async def read_response(
        self, disable_decoding: bool = False, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        inner = super().read_response(disable_decoding, timeout, **kwargs)  # type: ignore[misc]
        if timeout is not None:  # the caller's own bound (pub/sub polls), as redis-py keeps it
            return await inner
        return await self._bounded("reading from", inner)

    async def _bounded(self, what: str, call: Any) -> Any:
        if self._io_timeout is None:
            return await call
        try:
            async with asyncio.timeout(self._io_timeout):
                return await call
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisTimeoutError(f"Timeout {what} socket") from None


@cache
def cancel_safe(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (a ``redis.asyncio`` connection) with :class:`_CancelSafeTimeouts`."""
    return type(
        f"CancelSafe{connection_class.__name__}", (_CancelSafeTimeouts, connection_class), {}
    )


def _async_connection_class(url: str) -> type[Any]:
    if url.startswith("rediss://"):
        return cancel_safe(aioredis.SSLConnection)
    if url.startswith("unix://"):
        return cancel_safe(aioredis.UnixDomainSocketConnection)
    return cancel_safe(aioredis.Connection)


class _AsyncSentinelPool(aiosentinel.SentinelConnectionPool):
    """redis-py's Sentinel pool that also closes its connections to the sentinels.

    redis-py's own keeps them open after the client is closed (a socket per sentinel left
    behind by every closed TaskManager).
    """

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # a full close, not the drop of idle ones after a failover
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


class _AsyncBlockingSentinelPool(_AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The Sentinel pool (master lookup on connect) that queues instead of failing."""


class _SyncBlockingSentinelPool(syncsentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """The synchronous twin of :class:`_AsyncBlockingSentinelPool`."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.close()


def sentinel_kwargs(settings: TaskSettings) -> dict[str, Any]:
    """Connection options for the sentinels themselves (their own credentials, TLS, timeouts)."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": max(settings.redis_connect_timeout_s, 1.0),
    }
    if settings.redis_sentinel_username:
        kwargs["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    kwargs.update(_tls_kwargs(settings))
    return kwargs


def async_sentinel_client(settings: TaskSettings, host: str, port: int, **kwargs: Any) -> Any:
    """A ``redis.asyncio`` client of one sentinel, on :func:`cancel_safe` connections."""
    options = {**sentinel_kwargs(settings), **kwargs}
    tls = bool(options.pop("ssl", False))
    cls = cancel_safe(aioredis.SSLConnection if tls else aioredis.Connection)
    pool = aioredis.ConnectionPool(connection_class=cls, host=host, port=port, **options)
    return aioredis.Redis.from_pool(pool)


def _tls_kwargs(settings: TaskSettings) -> dict[str, Any]:
    if not settings.uses_tls:
        return {}
    tls: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": settings.redis_ssl_cert_reqs}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, f"redis_{name}")
        if value is not None:
            tls[name] = str(value)
    return tls


def _master_kwargs(settings: TaskSettings, db: Database) -> dict[str, Any]:
    """Options of a connection to the master in sentinel mode (what a URL carries otherwise)."""
    kwargs: dict[str, Any] = {"db": database(settings, db)}
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    return kwargs


def async_pool(
    settings: TaskSettings,
    db: Database,
    *,
    max_connections: int,
    blocking: bool = True,
    **options: Any,
) -> aioredis.ConnectionPool:
    """A ``redis.asyncio`` pool for ``db``; ``options`` are connection options (timeouts...).

    ``blocking`` pools wait up to the connect timeout for a free connection.
    """
    if not settings.uses_sentinel:
        url = settings.broker_url if db == "broker" else settings.backend_url
        options = {"connection_class": _async_connection_class(url), **options}
        if blocking:
            return aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=settings.redis_connect_timeout_s,
                **options,
            )
        return aioredis.ConnectionPool.from_url(url, max_connections=max_connections, **options)
    options = {k: v for k, v in options.items() if not k.startswith("ssl")}
    manager = aiosentinel.Sentinel(
        settings.sentinel_addresses, sentinel_kwargs=sentinel_kwargs(settings)
    )
    kwargs = {**options, **_master_kwargs(settings, db), **_tls_kwargs(settings)}
    kwargs["connection_class"] = cancel_safe(
        aiosentinel.SentinelManagedSSLConnection
        if kwargs.get("ssl")
        else aiosentinel.SentinelManagedConnection
    )
    if blocking:
        kwargs["timeout"] = settings.redis_connect_timeout_s
    cls = _AsyncBlockingSentinelPool if blocking else _AsyncSentinelPool
    pool: aioredis.ConnectionPool = cls(
        settings.redis_sentinel_master,
        manager,
        max_connections=max_connections,
        is_master=True,
        **kwargs,
    )
    return pool


def sync_pool(
    settings: TaskSettings, db: Database, *, max_connections: int, **options: Any
) -> redis.ConnectionPool:
    """A blocking synchronous pool for ``db`` (see :func:`async_pool`)."""
    if not settings.uses_sentinel:
        url = settings.broker_url if db == "broker" else settings.backend_url
        return redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=settings.redis_connect_timeout_s,
            **options,
        )
    options = {k: v for k, v in options.items() if not k.startswith("ssl")}
    manager = syncsentinel.Sentinel(
        settings.sentinel_addresses, sentinel_kwargs=sentinel_kwargs(settings)
    )
    pool: redis.ConnectionPool = _SyncBlockingSentinelPool(
        settings.redis_sentinel_master,
        manager,
        max_connections=max_connections,
        timeout=settings.redis_connect_timeout_s,
        is_master=True,
        **{**options, **_master_kwargs(settings, db), **_tls_kwargs(settings)},
    )
    return pool


def sync_redis(settings: TaskSettings, db: Database, *, max_connections: int = 4) -> redis.Redis:
    """A plain synchronous client for ``db`` with the settings' TLS and timeouts.

    For the worker's own bookkeeping threads (heartbeat, names, beat's lock), which used to
    build a client from the URL and so could not follow a failover.
    """
    pool = sync_pool(
        settings, db, max_connections=max_connections, **settings.redis_client_kwargs()
    )
    client: redis.Redis = redis.Redis.from_pool(pool)
    return client
