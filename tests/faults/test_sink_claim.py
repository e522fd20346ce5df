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

#: What is left of the dead run's claim when the live run meets it (seconds).
CLAIM_LEFT_S = 4


async def test_a_dead_runs_sink_claim_expires_and_the_task_completes(
    make_settings: Callable[..., TaskSettings], start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = make_settings()
    start_worker(settings, "claim", host=True, pool="solo")
    client = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    try:
        async with TaskManager(settings) as manager:
            handle = await manager.submit(count, 7, delay_s=0.5)
            # What a run SIGKILLed between claiming and acknowledging leaves behind, as it
            # stands some seconds after the kill (a run takes its claim for 15 s): the live run
            # waits out whatever is left, so 4 s of it prove the wait as well as 15 s.
            started = time.monotonic()  # before the claim's clock starts in the server
            client.set(settings.key("sink-acked", handle.id), "claim:dead-run", ex=CLAIM_LEFT_S)
            assert await manager.wait_for_result(handle, timeout=60) == 7
            waited = time.monotonic() - started
        assert client.hget(SINK_KEY, handle.id) == "1"
        assert client.hget(EXEC_KEY, handle.id) == "1"
        assert client.get(settings.key("sink-acked", handle.id)) == "acked"
        # Without the wait the result comes 0.5 s after the submit (the task's own delay).
        assert waited >= CLAIM_LEFT_S - 0.5, "the live run must wait for the claim to expire"
    finally:
        client.close()
