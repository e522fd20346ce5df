"""Issue 16, bug 2: purge is a record transition, tried as an operator would on real processes.

Before the fix a purge only deleted the queue's lists: purged tasks stayed PENDING for ever,
``watch()`` never ended, and a new submit of the same practice record got the dead id back.
The module works in its own databases (12 and 13) and starts the worker it needs (stopped by
PID at the end).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from support import flush, running_worker
from vocalborn_tasks import (
    AnalysisRequest,
    Monitor,
    TaskManager,
    TaskSettings,
    TaskState,
    TaskStatus,
    task_definition,
)
from vocalborn_tasks.errors import TaskRevokedError
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.tasks import TaskContext

pytestmark = pytest.mark.integration

HOST_QUEUE = "purge-videos"


@task_definition(name="tests.purge.video", queue=HOST_QUEUE)
def video(ctx: TaskContext, n: int) -> None:
    """Queued on a host's own queue, which no worker here consumes."""


@pytest.fixture
def settings(redis_url: str) -> Iterator[TaskSettings]:
    s = TaskSettings(
        redis_url=redis_url,
        redis_db_broker=12,
        redis_db_backend=13,
        celery_log_level="INFO",
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
        worker_soft_shutdown_s=1.0,  # the worker stops right after its result (tests/conftest.py)
    )
    flush(s)
    yield s
    flush(s)


def _request(record: str) -> AnalysisRequest:
    return AnalysisRequest(
        practice_record_id=record,
        recording=str(sample_path("en_other_voice")),
        reference=str(sample_path("en_reference")),
        language="en",
    )


async def test_purge_ends_tasks_tells_waiters_and_frees_records(
    settings: TaskSettings, tmp_path: Path
) -> None:
    records = [f"purge-rec-{n}" for n in range(3)]
    async with TaskManager(settings) as manager, Monitor(settings) as monitor:
        # No worker runs: the analyses wait in ai_analysis.
        ids = [await manager.submit_audio_analysis(_request(r)) for r in records]
        assert await monitor.get_queue_length("ai_analysis") == 3
        # Submitting a record in flight returns its task (the idempotency the purge must undo).
        assert await manager.submit_audio_analysis(_request(records[0])) == ids[0]

        seen: list[TaskStatus] = []
        first_seen = asyncio.Event()

        async def follow() -> None:
            async for status in manager.watch(ids[0]):
                seen.append(status)
                first_seen.set()

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(first_seen.wait(), 30)  # the watch has started (PENDING)
        assert seen[0].state is TaskState.PENDING

        assert await monitor.purge_queue("ai_analysis") == 3
        assert await monitor.get_queue_length("ai_analysis") == 0

        # The watch started before the purge ends, on REVOKED (bounded: it must not hang).
        await asyncio.wait_for(watcher, 30)
        assert seen[-1].state is TaskState.REVOKED
        assert seen[-1].error is not None and seen[-1].error.code == "purged"

        for task_id in ids:
            status = await manager.get_task_status(task_id)
            assert status.state is TaskState.REVOKED, status
            assert status.error is not None and status.error.code == "purged"
            # Final already: the wait returns at once (a bound, not a measurement).
            with pytest.raises(TaskRevokedError) as info:
                await manager.wait_for_result(task_id, timeout=10)
            assert info.value.code == "purged"
            assert info.value.task_id == task_id

        # The record is free: a new submit gets a new task, and a worker runs it.
        again = await manager.submit_audio_analysis(_request(records[0]))
        assert again not in ids
        with running_worker(
            settings, name="purge", queues="ai_analysis", concurrency=1, log_dir=tmp_path
        ):
            result = await manager.wait_for_result(again, timeout=180)
        assert result.practice_record_id == records[0]


def _cli(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CELERY_", "TASK_", "HOST_QUEUES"))
    }
    return subprocess.run(
        [sys.executable, "-m", "vocalborn_tasks", *args],
        env={**base, "REDIS_URL": f"{redis_url}/12", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_cli_purges_a_host_queue(settings: TaskSettings, redis_url: str) -> None:
    async with TaskManager(settings) as manager:
        handles = [await manager.submit(video, n) for n in range(2)]

    # A queue that is neither the library's nor declared: refused, one line, rc 2.
    proc = await anyio.to_thread.run_sync(
        lambda: _cli(redis_url, "purge", "--queue", HOST_QUEUE, "--yes")
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "HOST_QUEUES" in proc.stderr and "Traceback" not in proc.stderr

    # Declared in HOST_QUEUES (a plain comma-separated list): purged, and the tasks end.
    proc = await anyio.to_thread.run_sync(
        lambda: _cli(
            redis_url, "purge", "--queue", HOST_QUEUE, "--yes", HOST_QUEUES=f"other,{HOST_QUEUE}"
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"purged 2 tasks from {HOST_QUEUE}"
    async with TaskManager(settings) as manager:
        for handle in handles:
            status = await manager.get_task_status(handle)
            assert status.state is TaskState.REVOKED
            assert status.error is not None and status.error.code == "purged"
