"""Async Redis clients for the facade, and the one place their errors become ours.

Every call the manager or monitor makes goes through :func:`redis_errors`, so a host only ever
sees :class:`BrokerUnavailableError` (retry later) or :class:`BrokerAuthError` (fix the
credentials; a sibling under :class:`BrokerError`, so a retry loop never retries it), each
within a bounded time and with the server's address but never its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import redis
import redis.asyncio as aioredis
import redis.retry
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._connections import Database, async_pool, sync_pool
from .config import TaskSettings
from .errors import BrokerAuthError, BrokerUnavailableError
from .record.confirm import is_failover_error

__all__ = [
    "Batch",
    "PubSubConnections",
    "Reply",
    "Steps",
    "async_client",
    "pubsub_connection_factory",
    "redis_errors",
    "run_steps",
    "run_steps_sync",
    "sync_client",
    "sync_redis_errors",
]

T = TypeVar("T")

#: Time kept back from a call's limit for raising and unwinding (see :func:`redis_errors`).
_UNWIND_MARGIN_S = 0.1


def _kwargs(settings: TaskSettings, *, pubsub: bool = False, sync: bool = False) -> dict[str, Any]:
    kwargs = settings.redis_client_kwargs()
    kwargs["socket_keepalive"] = True
    if pubsub:
        # A subscribed connection must never send a health-check PING of its own: its reply
        # would be read as a message. It waits for messages without a timeout.
        kwargs.pop("health_check_interval", None)
        kwargs["socket_timeout"] = None
        # RESP2: subscription confirmations and messages arrive as plain replies we read
        # ourselves (RESP3 routes them through push handlers instead).
        kwargs["protocol"] = 2
    else:
        kwargs["socket_timeout"] = max(settings.redis_connect_timeout_s, 5.0)
    retry = redis.retry.Retry if sync else Retry
    kwargs["retry"] = retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    return kwargs


def async_client(
    settings: TaskSettings, db: Database, *, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled ``redis.asyncio`` client on ``db``; connects lazily on first use.

    The pool blocks when all its connections are busy (up to the connect timeout) instead of
    failing: a burst of a thousand concurrent submits queues for connections, it does not
    raise "Too many connections". With sentinels it asks them for the master on connect.
    """
    pool = async_pool(settings, db, max_connections=max_connections, **_kwargs(settings))
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)
    return client


def sync_client(settings: TaskSettings, db: Database, *, max_connections: int = 8) -> redis.Redis:
    """A pooled synchronous client with the same options as :func:`async_client`.

    For readers that run in a worker's pool process (the periodic health check), where no
    event loop runs and none should be started.
    """
    pool = sync_pool(settings, db, max_connections=max_connections, **_kwargs(settings, sync=True))
    client: redis.Redis = redis.Redis.from_pool(pool)
    return client


class PubSubConnections:
    """Dedicated connections for the result pub/sub hub, and where the master is now.

    With sentinels each new connection asks them for the current master when it connects,
    and :meth:`master_address` lets the hub notice that its subscribed connection is on a
    server that is no longer the master (a demoted master keeps its subscribers, who then
    hear nothing the new master publishes).
    """

    def __init__(self, settings: TaskSettings) -> None:
        self._pool = async_pool(
            settings,
            "backend",
            max_connections=2**31,
            blocking=False,
            **_kwargs(settings, pubsub=True),
        )
        self.sentinel = settings.uses_sentinel

    def __call__(self) -> aioredis.Connection:
        conn: aioredis.Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return conn

    async def master_address(self) -> tuple[str, int] | None:
        """The master's ``(host, port)`` as the sentinels name it; None without sentinels."""
        if not self.sentinel:
            return None
        lookup = getattr(self._pool, "get_master_address", None)
        if lookup is None:
            return None
        address = await lookup()
        return (str(address[0]), int(address[1]))

    async def aclose(self) -> None:
        """Close what the pool holds (the sentinels' connections, with sentinels)."""
        await self._pool.disconnect()


def pubsub_connection_factory(settings: TaskSettings) -> PubSubConnections:
    """A factory of dedicated connections for the result pub/sub hub."""
    return PubSubConnections(settings)


def _describe(settings: TaskSettings, exc: BaseException) -> str:
    detail = (
        str(exc).replace(settings.redis_password.get_secret_value(), "***")
        if (settings.redis_password is not None and settings.redis_password.get_secret_value())
        else str(exc)
    )
    return detail.splitlines()[0] if detail else type(exc).__name__


def _translated(settings: TaskSettings, action: str, exc: Exception) -> Exception | None:
    """Our error for a redis-py (or socket) error; None to let ``exc`` surface as itself."""
    where = settings.server_address
    if isinstance(exc, AuthenticationError):
        return BrokerAuthError(
            f"{action}: Redis at {where} refused our credentials; "
            "check REDIS_PASSWORD/REDIS_USERNAME"
        )
    if isinstance(exc, NoPermissionError):  # redis-py cuts the NOPERM code off the message
        return BrokerAuthError(
            f"{action}: Redis at {where} refused access (NOPERM); check "
            "REDIS_PASSWORD/REDIS_USERNAME and the ACL"
        )
    if isinstance(exc, ResponseError):
        text = str(exc)
        if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return BrokerAuthError(
                f"{action}: Redis at {where} refused access ({text.split()[0]}); check "
                "REDIS_PASSWORD/REDIS_USERNAME and the ACL"
            )
        if is_failover_error(exc):
            # NOREPLICAS, READONLY, MASTERDOWN, LOADING...: the server cannot take this now
            # (a failover, a replica gone, a restart); the same call may succeed in seconds.
            return BrokerUnavailableError(
                f"{action}: Redis at {where} cannot serve it now ({_describe(settings, exc)}); "
                "a failover or a restart in progress? retry"
            )
        return None
    if isinstance(exc, (ConnectionError, RedisTimeoutError, OSError)):
        if "certificate" in str(exc).lower() or "ssl" in type(exc).__name__.lower():
            return BrokerAuthError(
                f"{action}: TLS to Redis at {where} failed ({_describe(settings, exc)}); check "
                "REDIS_SSL_CA_CERTS and the server certificate"
            )
        return BrokerUnavailableError(
            f"{action}: cannot reach Redis at {where} ({_describe(settings, exc)}); start the "
            "server or set REDIS_URL"
        )
    if isinstance(exc, RedisError):
        return BrokerUnavailableError(f"{action}: Redis error: {_describe(settings, exc)}")
    return None


@contextlib.asynccontextmanager
async def redis_errors(
    settings: TaskSettings, action: str, *, timeout: float | None = None, bounded: bool = True
) -> AsyncIterator[None]:
    """Bound a block of Redis calls in time and translate its errors.

    Args:
        action: what we were doing, for the message ("submit", "status of task ...").
        timeout: seconds the block may take, raising included; defaults to the connect
            timeout (``REDIS_CONNECT_TIMEOUT``, 5 s).
        bounded: False to only translate errors (the caller bounds the time itself).
    """
    limit = settings.redis_connect_timeout_s if timeout is None else timeout
    try:
        # Stop a little early so the whole call, unwinding included, stays within the limit.
        async with asyncio.timeout(max(limit - _UNWIND_MARGIN_S, limit / 2) if bounded else None):
            yield
    except TimeoutError as exc:
        raise BrokerUnavailableError(
            f"{action}: Redis at {settings.server_address} did not answer within {limit:g} s; "
            "is the server running and reachable? (set REDIS_URL to point elsewhere)"
        ) from exc
    except (RedisError, OSError) as exc:
        ours = _translated(settings, action, exc)
        if ours is None:
            raise
        raise ours from exc


@contextlib.contextmanager
def sync_redis_errors(settings: TaskSettings, action: str) -> Iterator[None]:
    """:func:`redis_errors` for a synchronous client: the same translation.

    Time is bounded by the client's own connect and socket timeouts (see :func:`sync_client`),
    not by a deadline over the block.
    """
    try:
        yield
    except (RedisError, OSError) as exc:
        ours = _translated(settings, action, exc)
        if ours is None:
            raise
        raise ours from exc


# --- readers written once, run by either client -------------------------------------------------


class Batch(NamedTuple):
    """One round trip a reader asks for: commands pipelined (no transaction) to one server."""

    #: ``broker`` or ``backend`` (the two databases a reader may use).
    server: Literal["broker", "backend"]
    #: Each a command and its arguments, as ``execute_command`` takes them (``("LLEN", key)``);
    #: replies are parsed by the client's usual callbacks, so sync and async replies match.
    commands: Sequence[tuple[Any, ...]]
    #: What the reader was doing, for error messages.
    action: str


class Reply(NamedTuple):
    """The replies of a :class:`Batch`, in order, and how long its round trip took."""

    values: list[Any]
    elapsed_ms: float


#: A reader: a generator that yields the batches it needs, is sent their replies (or thrown
#: the translated error of a failed round trip), and returns what it decided. Written once,
#: it is run by :func:`run_steps` (``redis.asyncio``) or :func:`run_steps_sync` (``redis``).
Steps = Generator[Batch, Reply, T]


async def run_steps(
    steps: Steps[T], settings: TaskSettings, *, broker: aioredis.Redis, backend: aioredis.Redis
) -> T:
    """Run a reader on asyncio clients, each round trip bounded by :func:`redis_errors`."""
    clients = {"broker": broker, "backend": backend}
    try:
        batch = next(steps)
        while True:
            try:
                async with redis_errors(settings, batch.action):
                    started = time.perf_counter()
                    values: list[Any] = []
                    if batch.commands:
                        pipe = clients[batch.server].pipeline(transaction=False)
                        for command in batch.commands:
                            pipe.execute_command(*command)
                        values = await pipe.execute()
                    elapsed = (time.perf_counter() - started) * 1000
            except Exception as exc:
                batch = steps.throw(exc)  # the reader decides what an error means
            else:
                batch = steps.send(Reply(values, elapsed))
    except StopIteration as stop:
        result: T = stop.value
        return result


def run_steps_sync(
    steps: Steps[T], settings: TaskSettings, *, broker: redis.Redis, backend: redis.Redis
) -> T:
    """Run a reader on synchronous clients (no event loop), errors as :func:`run_steps`."""
    clients = {"broker": broker, "backend": backend}
    try:
        batch = next(steps)
        while True:
            try:
                with sync_redis_errors(settings, batch.action):
                    started = time.perf_counter()
                    values: list[Any] = []
                    if batch.commands:
                        pipe = clients[batch.server].pipeline(transaction=False)
                        for command in batch.commands:
                            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                        values = pipe.execute()
                    elapsed = (time.perf_counter() - started) * 1000
            except Exception as exc:
                batch = steps.throw(exc)
            else:
                batch = steps.send(Reply(values, elapsed))
    except StopIteration as stop:
        result: T = stop.value
        return result
