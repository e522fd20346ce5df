"""Raw Celery with its default settings (only broker and backend URLs set).

Worker: ``celery -A celery_plain worker --pool prefork --concurrency 2``.
"""

from __future__ import annotations

import os

from celery import Celery

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("celery_plain", broker=f"{_URL}/0", backend=f"{_URL}/1")


@app.task(name="plain.noop")  # type: ignore[untyped-decorator]
def noop() -> dict[str, int]:
    """Return a small dict and nothing else."""
    return {"ok": 1}
