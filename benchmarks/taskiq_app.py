"""taskiq + taskiq-redis on the same server: ``taskiq worker taskiq_app:broker --workers 2``."""

from __future__ import annotations

import os

from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

broker = ListQueueBroker(f"{_URL}/2").with_result_backend(
    RedisAsyncResultBackend(f"{_URL}/3", result_ex_time=3600)
)


@broker.task(task_name="taskiq.noop")
async def noop() -> dict[str, int]:
    """Return a small dict and nothing else."""
    return {"ok": 1}
