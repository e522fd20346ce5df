"""Async Redis clients for the facade, and the one place their errors become ours.

Every call the manager or monitor makes goes through :func:`redis_errors`, so a host only ever
sees :class:`BrokerUnavailableError` (retry later) or :class:`BrokerAuthError` (fix the
credentials; a sibling under :class:`BrokerError`, so a retry loop never retries it), each
within a bounded time and with the server's address but never its password.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import TaskSettings
from .errors import BrokerAuthError, BrokerUnavailableError

__all__ = ["async_client", "pubsub_connection_factory", "redis_errors"]

#: Time kept back from a call's limit for raising and unwinding (see :func:`redis_errors`).
_UNWIND_MARGIN_S = 0.1


def _kwargs(settings: TaskSettings, *, pubsub: bool = False) -> dict[str, Any]:
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
    kwargs["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    return kwargs


def async_client(settings: TaskSettings, url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A pooled ``redis.asyncio`` client; connects lazily on first use.

    The pool blocks when all its connections are busy (up to the connect timeout) instead of
    failing: a burst of a thousand concurrent submits queues for connections, it does not
    raise "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=settings.redis_connect_timeout_s,
        **_kwargs(settings),
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)
    return client


def pubsub_connection_factory(settings: TaskSettings) -> Any:
    """A factory of dedicated connections for the result pub/sub hub."""
    pool = aioredis.ConnectionPool.from_url(settings.backend_url, **_kwargs(settings, pubsub=True))

    def make() -> aioredis.Connection:
        conn: aioredis.Connection = pool.make_connection()  # type: ignore[no-untyped-call]
        return conn

    return make


def _describe(settings: TaskSettings, exc: BaseException) -> str:
    detail = (
        str(exc).replace(settings.redis_password.get_secret_value(), "***")
        if (settings.redis_password is not None and settings.redis_password.get_secret_value())
        else str(exc)
    )
    return detail.splitlines()[0] if detail else type(exc).__name__


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
    where = settings.server_address
    try:
        # Stop a little early so the whole call, unwinding included, stays within the limit.
        async with asyncio.timeout(max(limit - _UNWIND_MARGIN_S, limit / 2) if bounded else None):
            yield
    except TimeoutError as exc:
        raise BrokerUnavailableError(
            f"{action}: Redis at {where} did not answer within {limit:g} s; is the server "
            "running and reachable? (set REDIS_URL to point elsewhere)"
        ) from exc
    except AuthenticationError as exc:
        raise BrokerAuthError(
            f"{action}: Redis at {where} refused our credentials; "
            "check REDIS_PASSWORD/REDIS_USERNAME"
        ) from exc
    except ResponseError as exc:
        text = str(exc)
        if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise BrokerAuthError(
                f"{action}: Redis at {where} refused access ({text.split()[0]}); check "
                "REDIS_PASSWORD/REDIS_USERNAME and the ACL"
            ) from exc
        raise
    except (ConnectionError, RedisTimeoutError, OSError) as exc:
        if "certificate" in str(exc).lower() or "ssl" in type(exc).__name__.lower():
            raise BrokerAuthError(
                f"{action}: TLS to Redis at {where} failed ({_describe(settings, exc)}); check "
                "REDIS_SSL_CA_CERTS and the server certificate"
            ) from exc
        raise BrokerUnavailableError(
            f"{action}: cannot reach Redis at {where} ({_describe(settings, exc)}); start the "
            "server or set REDIS_URL"
        ) from exc
    except RedisError as exc:
        raise BrokerUnavailableError(f"{action}: Redis error: {_describe(settings, exc)}") from exc
