"""dramatiq (Redis broker + Redis results) on the same server.

Worker: ``dramatiq dramatiq_app --processes 2 --threads 1`` (or ``--threads 8``).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

broker = RedisBroker(url=f"{_URL}/4")  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=RedisBackend(url=f"{_URL}/5")))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop() -> dict[str, int]:
    """Return a small dict and nothing else."""
    return {"ok": 1}
