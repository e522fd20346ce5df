"""Two ``vocalborn-tasks beat`` processes started by mistake: each job is sent once per period,
and when the leading beat stops, the other takes over.

No worker runs here: every message beat sends stays in its queue, so the number of messages
equals the number of sends (module databases 10 and 11).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from support import flush, wait_until
from vocalborn_tasks import TaskSettings
from vocalborn_tasks.embedded import die_with_parent
from vocalborn_tasks.worker.beat import beat_runs

pytestmark = pytest.mark.integration

PERIOD_S = 1.0
JOBS = {"vocalborn-maintenance-cleanup": "maintenance", "vocalborn-health-check": "health"}


@pytest.fixture
def settings(redis_url: str) -> TaskSettings:
    s = TaskSettings(redis_url=redis_url, redis_db_broker=10, redis_db_backend=11)
    flush(s)
    return s


class Beat:
    def __init__(self, redis_url: str, cwd: Path, name: str) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "BEAT_"))
        }
        env.update(
            REDIS_URL=redis_url,
            REDIS_DB_BROKER="10",
            REDIS_DB_BACKEND="11",
            CELERY_LOG_LEVEL="INFO",
            BEAT_LOCK_TTL="2",
            BEAT_SCHEDULE=json.dumps(
                {
                    "vocalborn-maintenance-cleanup": {
                        "task": "vocalborn.maintenance.cleanup",
                        "every_s": PERIOD_S,
                    },
                    "vocalborn-health-check": {
                        "task": "vocalborn.health.check",
                        "every_s": PERIOD_S,
                    },
                }
            ),
        )
        self.log = cwd / f"beat-{name}.log"
        with open(self.log, "wb") as fh:
            # Both in the same directory, as a mistaken second start would be.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vocalborn_tasks", "beat"],
                env=env,
                cwd=cwd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def beats(redis_url: str, tmp_path: Path, settings: TaskSettings) -> Iterator[list[Beat]]:
    started = [Beat(redis_url, tmp_path, "a"), Beat(redis_url, tmp_path, "b")]
    try:
        yield started
    finally:
        for b in started:
            b.stop()


def sends(client: redis.Redis, settings: TaskSettings) -> dict[str, list[tuple[float, str]]]:
    out = {}
    for job in JOBS:
        raw = client.zrange(settings.key("beat", "runs", job), 0, -1, withscores=True)
        out[job] = [(float(score), member.decode().split(":", 1)[1]) for member, score in raw]
    return out


def test_two_beats_send_each_job_once_per_period(settings: TaskSettings, beats: list[Beat]) -> None:
    broker = redis.Redis.from_url(settings.broker_url)
    backend = redis.Redis.from_url(settings.backend_url)
    try:
        wait_until(
            lambda: all(len(beat_runs(backend, settings, j)) >= 5 for j in JOBS),
            60,
            interval=0.2,
            what="five sends of each job",
        )
        for b in beats:
            assert b.proc.poll() is None, b.log.read_text()
        seen = sends(backend, settings)
        for job, queue in JOBS.items():
            times = [t for t, _ in seen[job]]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g > 0.5 * PERIOD_S for g in gaps), (job, gaps)  # never twice in a period
            assert len({token for _, token in seen[job]}) == 1  # one leader sent them all
            # Each send is exactly one message (nothing consumes the queue here).
            assert broker.llen(queue) == len(beat_runs(backend, settings, job))

        # Stop the leader: the other beat takes over within the lock's TTL.
        leader_pid = int(seen["vocalborn-health-check"][0][1].split(":")[1])
        leader = next(b for b in beats if b.proc.pid == leader_pid)
        follower = next(b for b in beats if b is not leader)
        leader.stop()
        handover = time.time()
        wait_until(
            lambda: any(
                str(follower.proc.pid) in tok
                for _, tok in sends(backend, settings)["vocalborn-health-check"]
            ),
            30,
            interval=0.2,
            what="the standby beat to take over",
        )
        after = [t for t, _ in sends(backend, settings)["vocalborn-health-check"]]
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert all(g > 0.5 * PERIOD_S for g in gaps), gaps
        assert after[-1] >= handover
    finally:
        broker.close()
        backend.close()
