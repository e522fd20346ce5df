"""Scenario 13: 10,000 short tasks, two workers, one SIGKILLed half-way."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from faults.helpers import EXEC_KEY, SINK_KEY, count
from support import WorkerProcess, wait_until
from vocalborn_tasks import TaskManager, TaskSettings

pytestmark = pytest.mark.faults

N = 10_000


def _finished(settings: TaskSettings) -> int:
    client = redis.Redis.from_url(settings.backend_url)
    try:
        return int(client.hlen(SINK_KEY))
    finally:
        client.close()


async def test_ten_thousand_tasks_one_worker_killed(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    workers = [
        start_worker(settings, f"load{i}", host=True, pool="solo", wait=False) for i in (1, 2)
    ]
    for w in workers:
        w.wait_ready()
    async with TaskManager(settings) as manager:
        started = time.monotonic()
        handles = [await manager.submit(count, i) for i in range(N)]
        waiters = [asyncio.ensure_future(manager.wait_for_result(h, timeout=240)) for h in handles]
        await asyncio.to_thread(wait_until, lambda: _finished(settings) >= N // 2, 120, 0.05)
        os.kill(workers[0].pid, signal.SIGKILL)
        killed_at = time.monotonic() - started
        results = await asyncio.gather(*waiters)
        elapsed = time.monotonic() - started
    client = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    executions = {k: int(v) for k, v in client.hgetall(EXEC_KEY).items()}
    sink = {k: int(v) for k, v in client.hgetall(SINK_KEY).items()}
    client.close()
    ids = {h.id for h in handles}
    assert results == list(range(N))  # every caller got its own value, none lost
    assert set(sink) == ids
    assert set(executions) == ids
    # The one documented window (docs/reliability.md): the killed worker's task, if the kill
    # fell between its sink's commit and the acknowledgement of it, reaches the sink twice.
    # Anything else seen twice is a bug. tests/faults/test_fault_points.py forces the window.
    twice = {k: v for k, v in sink.items() if v != 1}
    assert len(twice) <= 1 and all(v == 2 for v in twice.values()), twice
    assert all(executions[k] == 2 for k in twice), (twice, {k: executions[k] for k in twice})
    reruns = sum(v - 1 for v in executions.values())
    print(  # the figures docs/reliability.md reports (pytest -s shows them)
        f"\nload: {N} tasks in {elapsed:.1f} s ({N / elapsed:.0f}/s), worker killed at "
        f"{killed_at:.1f} s, executions {sum(executions.values())}, re-runs {reruns}, "
        f"sink calls {sum(sink.values())}"
    )
