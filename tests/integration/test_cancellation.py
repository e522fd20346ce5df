"""A cancelled call stays cancelled: the asyncio clients never swallow a cancellation.

redis-py bounds each write with ``asyncio.wait_for``; on Python 3.11 that returns the write's
result when the cancellation lands as the write completes, and the cancellation is lost
(CPython gh-86296). ``Monitor.health()`` lost 16 of 60 cancels in a loop, ``vocalborn-tasks
monitor`` ignored Ctrl+C once in 60, and a host's timeout around a TaskManager call could be
lost the same way. The clients'
connections (``_connections.cancel_safe``) bound writes and reads with ``asyncio.timeout``
instead. The first test puts the cancellation exactly in that window: the write has
completed, the caller has not resumed yet.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from vocalborn_tasks import Monitor, TaskSettings
from vocalborn_tasks._connections import cancel_safe
from vocalborn_tasks._redis import async_client
from vocalborn_tasks.embedded import LocalServer

pytestmark = pytest.mark.integration


async def _cancel_as_the_write_completes(
    client: aioredis.Redis, call: Callable[[], Any]
) -> asyncio.Task[Any]:
    """Run ``call`` in a task that is cancelled the moment its first write has drained."""
    connection = await client.connection_pool.get_connection()
    await client.connection_pool.release(connection)
    assert type(connection).__name__.startswith("CancelSafe"), type(connection)
    writer = connection._writer
    assert writer is not None
    drain = writer.drain
    task: asyncio.Task[Any] | None = None

    async def drain_then_cancel() -> None:
        await drain()
        writer.drain = drain  # type: ignore[method-assign]
        assert task is not None
        task.cancel()

    writer.drain = drain_then_cancel  # type: ignore[method-assign]
    task = asyncio.create_task(call())
    await asyncio.wait({task}, timeout=10)
    return task


async def test_a_call_cancelled_as_its_write_completes_stays_cancelled(
    base_settings: TaskSettings,
) -> None:
    client = async_client(base_settings, "broker", max_connections=1)
    try:
        await client.ping()
        task = await _cancel_as_the_write_completes(client, lambda: client.ping())
        assert task.done(), "the cancelled call did not end"
        assert task.cancelled(), f"the cancellation was swallowed: {task.result()!r}"
        assert await client.ping()  # the client goes on working
    finally:
        await client.aclose()


async def test_monitor_health_never_swallows_a_cancellation(base_settings: TaskSettings) -> None:
    """What ``vocalborn-tasks monitor`` does on Ctrl+C (asyncio.run cancels its main task),
    at many points of a health check: each cancel ends the loop."""
    async with Monitor(base_settings) as monitor:
        await monitor.health()

        async def forever() -> None:
            while True:
                await monitor.health()

        for delay_ms in range(0, 60, 2):
            task = asyncio.create_task(forever())
            await asyncio.sleep(delay_ms / 1000)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done and task.cancelled(), f"cancel after {delay_ms} ms was swallowed"


@pytest.fixture
def frozen_server(server_binary: str | None, tmp_path: Path) -> Iterator[LocalServer]:
    with LocalServer(binary=server_binary, data_dir=tmp_path, die_with_parent=True) as server:
        yield server


async def test_a_frozen_server_still_times_out(frozen_server: LocalServer) -> None:
    """The timeouts moved from redis-py's ``wait_for`` to ``asyncio.timeout``; they still hold:
    a read from a server that answers nothing raises redis-py's TimeoutError, and the
    connection is dropped."""
    pool = aioredis.ConnectionPool.from_url(
        frozen_server.url,
        connection_class=cancel_safe(aioredis.Connection),
        socket_timeout=0.3,
        socket_connect_timeout=2.0,
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        assert await client.ping()
        assert frozen_server.pid is not None
        os.kill(frozen_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await client.ping()
            assert time.monotonic() - started < 5
        finally:
            os.kill(frozen_server.pid, signal.SIGCONT)
        assert await client.ping()
    finally:
        await client.aclose()
