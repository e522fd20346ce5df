"""A run killed while it held the sink claim must not make the redelivered run fail.

The 10,000-task load test hit this by chance (the SIGKILL landed inside ``deliver_once``);
here the dead run's claim is planted on purpose, so the case is exercised every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from faults.helpers import EXEC_KEY, SINK_KEY, count
from support import WorkerProcess
from vocalborn_tasks import TaskManager, TaskSettings

pytestmark = pytest.mark.faults


async def test_a_dead_runs_sink_claim_expires_and_the_task_completes(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    start_worker(settings, "claim", host=True, pool="solo")
    client = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    try:
        async with TaskManager(settings) as manager:
            handle = await manager.submit(count, 7, delay_s=0.5)
            # What a run SIGKILLed between claiming and acknowledging leaves behind.
            client.set(settings.key("sink-acked", handle.id), "claim:dead-run", ex=15)
            started = time.monotonic()
            assert await manager.wait_for_result(handle, timeout=60) == 7
            waited = time.monotonic() - started
        assert client.hget(SINK_KEY, handle.id) == "1"
        assert client.hget(EXEC_KEY, handle.id) == "1"
        assert client.get(settings.key("sink-acked", handle.id)) == "acked"
        assert waited >= 10, "the live run must wait for the dead run's claim to expire"
    finally:
        client.close()
