"""What a worker stores as a task starts and ends, now that both ride on other round trips.

STARTED is written by the task runtime's delivery script (Celery's ``task_track_started`` is
off) and the run's statistics by the result backend's store; these tests read what a real
worker leaves in Redis at each point.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from faults.helpers import EXEC_KEY, count
from support import WorkerProcess, wait_until
from vocalborn_tasks import TaskManager, TaskSettings, TaskState

pytestmark = pytest.mark.faults


async def test_a_running_task_is_started_listed_and_then_recorded(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    worker = start_worker(settings, "lifecycle", host=True, pool="solo")
    client = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    try:
        async with TaskManager(settings) as manager:
            handle = await manager.submit(count, 3, delay_s=2.0)
            meta_key = f"celery-task-meta-{handle.id}"
            wait_until(lambda: client.hget(EXEC_KEY, handle.id) == "1", timeout=30)
            # While it runs: STARTED with the process that runs it, and listed as running.
            status = await manager.get_task_status(handle)
            assert status.state is TaskState.STARTED
            meta = json.loads(client.get(meta_key) or "{}")
            assert meta["result"]["pid"] in [*worker.child_pids(), worker.pid]
            assert meta["result"]["hostname"].startswith("lifecycle")
            running = client.hget(settings.key("stats", "running"), handle.id)
            assert running is not None and json.loads(running)["n"] == "faults.count"
            assert client.get(settings.key("deliveries", handle.id, "0")) == "1"

            assert await manager.wait_for_result(handle, timeout=60) == 3
        # Ended: no longer running, and the run is recorded once, with its outcome.
        assert client.hget(settings.key("stats", "running"), handle.id) is None
        runs = [
            json.loads(m)
            for m in client.zrange(settings.key("stats", "runs", "faults.count"), 0, -1)
        ]
        mine = [r for r in runs if r["id"] == handle.id]
        assert len(mine) == 1
        assert mine[0]["o"] == "success" and mine[0]["d"] >= 2.0
        assert client.hget(settings.key("stats", "count"), "faults.count|success") == "1"
    finally:
        client.close()


async def test_a_task_revoked_before_it_starts_is_never_marked_started(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    client = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    try:
        async with TaskManager(settings) as manager:
            # Queued with no worker running, cancelled, then a worker comes up and takes it.
            handle = await manager.submit(count, 4)
            await manager.cancel(handle)
            start_worker(settings, "revoked", host=True, pool="solo")
            wait_until(
                lambda: client.get(settings.key("deliveries", handle.id, "0")) == "1", timeout=30
            )
            status = await manager.get_task_status(handle)
        assert status.state is TaskState.REVOKED
        assert client.hget(EXEC_KEY, handle.id) is None, "the body must not run"
        assert client.hget(settings.key("stats", "running"), handle.id) is None
        wait_until(
            lambda: client.hget(settings.key("stats", "count"), "faults.count|revoked") == "1",
            timeout=30,
        )
    finally:
        client.close()
