"""Monitor against a real server and a real worker: exact queue lengths and positions, the wait
estimate against the measured wait, task statistics, and health verdicts.

The module works in its own databases (2 and 3) of the session server, so stopping its
worker or filling its queues never disturbs other modules. The eviction-policy test runs its
own server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis

from support import WorkerProcess, async_wait_until, flush, wait_for_runs, wait_until
from vocalborn_tasks import (
    HealthLevel,
    Monitor,
    TaskManager,
    TaskSettings,
    TaskState,
    task_definition,
)
from vocalborn_tasks.embedded import LocalServer
from vocalborn_tasks.stats import parse_run
from vocalborn_tasks.tasks import TaskContext, echo, health_check
from vocalborn_tasks.worker.factory import create_celery_app

pytestmark = pytest.mark.integration

#: A queue no worker consumes: its backlog stays exactly as built.
HELD = "ops-monitor-held"


@task_definition(name="tests.monitor.held", queue=HELD)
def held(ctx: TaskContext, n: int) -> None:
    """Never runs (nobody consumes HELD)."""


@pytest.fixture(scope="module")
def settings(redis_url: str) -> TaskSettings:
    s = TaskSettings(
        redis_url=redis_url,
        redis_db_broker=2,
        redis_db_backend=3,
        celery_log_level="INFO",
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
    )
    flush(s)
    return s


@pytest.fixture(scope="module")
def worker(
    settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker, one pool process, every queue: a steady, predictable consumer."""
    proc = WorkerProcess(
        settings, name="monitor", concurrency=1, log_dir=tmp_path_factory.mktemp("logs")
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def monitor(settings: TaskSettings) -> AsyncIterator[Monitor]:
    async with Monitor(settings) as m:
        yield m


async def test_queue_lengths_and_positions_are_exact(
    settings: TaskSettings, monitor: Monitor
) -> None:
    """5 tasks on the base list, 2 at priority 3 and 1 at priority 9 (sent by Celery itself)."""
    async with TaskManager(settings) as manager:
        base = [(await manager.submit(held, i)).id for i in range(5)]
    app = create_celery_app(settings)

    def send(priority: int) -> str:
        return str(
            app.send_task("tests.monitor.held", kwargs={"n": 0}, queue=HELD, priority=priority).id
        )

    try:
        pri3 = [await anyio.to_thread.run_sync(send, 4) for _ in range(2)]
        pri9 = [await anyio.to_thread.run_sync(send, 9)]
    finally:
        app.close()
    try:
        assert await monitor.get_queue_length(HELD) == 8
        (stats,) = await monitor.get_queue_stats([HELD])
        assert stats.length == 8
        assert stats.priority_lengths == {0: 5, 3: 2, 6: 0, 9: 1}
        assert stats.consumers == 0
        assert stats.oldest_age_s is not None and stats.oldest_age_s >= 0

        # Workers pop the base list from the right (first submitted first), then priority 3, 6, 9.
        for expected, task_id in enumerate([*base, *pri3, *pri9], start=1):
            pos = await monitor.get_task_position(task_id, queue=HELD)
            assert pos.state == "waiting", pos
            assert pos.queue == HELD
            assert pos.position == expected, (task_id, pos)
            assert pos.queue_length == 8
            assert pos.estimated_wait_s is None  # nobody consumes this queue
        missing = await monitor.get_task_position(str(uuid.uuid4()))
        assert missing.state == "not_queued" and missing.position is None
    finally:
        assert await monitor.purge_queue(HELD) == 8
    assert await monitor.get_queue_length(HELD) == 0


def _run_record(settings: TaskSettings, task_id: str) -> object:
    client = redis.Redis.from_url(settings.backend_url)
    try:
        for member in client.zrange(settings.key("stats", "runs", echo.name), 0, -1):
            run = parse_run(echo.name, member)
            if run is not None and run.task_id == task_id:
                return run
        return None
    finally:
        client.close()


async def test_wait_estimate_within_30_percent_and_task_stats(
    settings: TaskSettings, worker: WorkerProcess, monitor: Monitor
) -> None:
    delay = 0.4
    async with TaskManager(settings) as manager:
        # Warm up: the estimate is built from recent durations, so give it some.
        warm = [await manager.submit(echo, f"warm{i}", delay_s=delay) for i in range(3)]
        for handle in warm:
            await manager.wait_for_result(handle, timeout=30)

        backlog = [await manager.submit(echo, f"b{i}", delay_s=delay) for i in range(7)]
        last = backlog[-1]
        pos = await monitor.get_task_position(last.id)
        estimated_at = time.time()
        assert pos.state == "waiting", pos
        assert pos.queue == "health"
        assert pos.consumer_processes == 1
        assert pos.position is not None and pos.position >= 5
        assert pos.estimated_wait_s is not None and pos.mean_duration_s is not None

        await manager.wait_for_result(last, timeout=60)
        run = wait_until(lambda: _run_record(settings, last.id), 10, what="run record")
        measured = run.started - estimated_at  # type: ignore[attr-defined]
        assert measured > 1.0  # a real backlog stood in front of it
        print(f"estimated {pos.estimated_wait_s:.3f} s, measured {measured:.3f} s ({pos})")
        assert abs(pos.estimated_wait_s - measured) <= 0.3 * measured, (pos, measured)

        # Two permanent failures (an argument the worker's validation refuses).
        bad = [await manager.submit(echo, "bad", delay_s="soon") for _ in range(2)]  # type: ignore[arg-type]
        for handle in bad:
            with pytest.raises(Exception):  # noqa: B017, PT011 - TaskFailedError or InvalidRequestError
                await manager.wait_for_result(handle, timeout=30)

    await wait_for_runs(settings, echo.name, "failure", 2)
    stats = {t.task: t for t in await monitor.get_task_type_stats()}
    echo_stats = stats[echo.name]
    assert echo_stats.queue == "health"
    assert echo_stats.failed == 2
    assert echo_stats.succeeded >= 10
    assert echo_stats.failure_rate == pytest.approx(2 / (echo_stats.succeeded + 2))
    assert echo_stats.retry_rate == 0
    assert echo_stats.p50_s is not None and echo_stats.p95_s is not None
    assert echo_stats.p50_s <= echo_stats.p95_s
    assert delay <= echo_stats.p95_s < delay * 3

    workers = await monitor.get_worker_stats()
    assert [w.hostname for w in workers] == [worker.hostname]
    assert workers[0].concurrency == 1 and workers[0].rss_kb > 0

    # The count is the worker's as of its last heartbeat: it catches up with all 12 runs
    # within a beat or two (it read 9 of 12 once, on a loaded machine, right after the last).
    async def all_counted() -> bool:
        return (await monitor.get_worker_stats())[0].processed >= 12

    await async_wait_until(all_counted, 10, 0.1, "the heartbeat to count all 12 runs")


async def test_wait_estimate_counts_each_task_type_by_its_own_durations(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A slow task running in front of fast ones: the estimate is at least what it has left.

    With one mean per queue, 20 fast runs made the 3 s task look like 0.2 s, and the wait
    behind it came out near zero (issue 16). Its own databases and worker: the durations it
    is built from are exactly the runs below.
    """
    slow_s = 3.0
    settings = TaskSettings(
        redis_url=redis_url,
        redis_db_broker=14,
        redis_db_backend=15,
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
    )
    flush(settings)
    proc = WorkerProcess(
        settings,
        name="estimate",
        queues="health",
        concurrency=1,
        log_dir=tmp_path_factory.mktemp("logs"),
    )
    proc.start()
    client = redis.Redis.from_url(settings.backend_url)
    try:
        async with TaskManager(settings) as manager, Monitor(settings) as monitor:
            # Real run records: one slow echo, twenty fast health checks.
            await manager.wait_for_result(
                await manager.submit(echo, "warm", delay_s=slow_s), timeout=60
            )
            for _ in range(20):
                await manager.wait_for_result(await manager.submit(health_check), timeout=60)
            await wait_for_runs(settings, health_check.name, "success", 20)

            slow = await manager.submit(echo, "slow", delay_s=slow_s)

            async def started() -> bool:
                state = (await manager.get_task_status(slow)).state
                return state in (TaskState.STARTED, TaskState.PROGRESS)

            await async_wait_until(started, 60, what="the slow task to start")
            ahead = [await manager.submit(health_check) for _ in range(2)]
            target = await manager.submit(health_check)
            pos = await monitor.get_task_position(target.id)
            estimated_at = time.time()

            runs = [
                parse_run(echo.name, m)
                for m in client.zrange(settings.key("stats", "runs", echo.name), 0, -1)
            ]
            slow_mean = sum(r.duration_s for r in runs if r is not None) / len(runs)
            running = json.loads(client.hget(settings.key("stats", "running"), slow.id) or "{}")
            # What the running task should still take, at the latest moment of the estimate.
            remaining = slow_mean - (estimated_at - float(running["s"]))

            assert pos.state == "waiting" and pos.position == 3, pos
            assert pos.estimated_wait_s is not None, pos
            assert pos.estimated_wait_s >= remaining - 0.001, (pos, remaining)
            assert pos.estimated_wait_s <= slow_mean + 1.0, (pos, slow_mean)
            fast = {t.task: t for t in await monitor.get_task_type_stats()}[health_check.name]
            assert pos.mean_duration_s is not None and fast.mean_s is not None
            assert pos.mean_duration_s == pytest.approx(fast.mean_s, abs=0.01)  # its own type
            for handle in [slow, *ahead, target]:
                await manager.wait_for_result(handle, timeout=60)
    finally:
        client.close()
        proc.stop()


async def test_health_unhealthy_without_worker_and_healthy_again(
    settings: TaskSettings, worker: WorkerProcess, monitor: Monitor
) -> None:
    report = await monitor.health()
    assert report.level is not HealthLevel.UNHEALTHY, report.reasons
    assert report.workers == 1
    assert report.broker_latency_ms is not None and report.backend_latency_ms is not None
    assert report.maxmemory_policy == "noeviction"
    assert {q.name: q.consumers for q in report.queues} == {
        "ai_analysis": 1,
        "maintenance": 1,
        "health": 1,
    }

    worker.stop()
    try:
        # A cold stop may leave its last heartbeat until it expires (worker_dead_after_s).
        deadline = time.monotonic() + settings.worker_dead_after_s + 5
        for _ in range(200):
            report = await monitor.health()
            if not report.workers or time.monotonic() > deadline:
                break
            await anyio.sleep(0.2)
        assert report.level is HealthLevel.UNHEALTHY
        assert report.workers == 0
        assert any("queue ai_analysis has no live worker" in r for r in report.reasons), report
    finally:
        worker.start()
    report = await monitor.health()
    assert report.level is not HealthLevel.UNHEALTHY, report.reasons
    assert report.workers == 1


async def test_health_unhealthy_with_an_evicting_policy(
    tmp_path: Path, server_binary: str | None
) -> None:
    server = LocalServer(
        binary=server_binary,
        data_dir=tmp_path / "lru",
        config={"maxmemory-policy": "allkeys-lru"},
        die_with_parent=True,
    )
    server.start()
    try:
        # No worker is needed for this check: only the server's own settings are judged.
        settings = TaskSettings(redis_url=server.url, health_required_queues=[])
        async with Monitor(settings) as m:
            report = await m.health()
            assert report.level is HealthLevel.UNHEALTHY
            assert report.maxmemory_policy == "allkeys-lru"
            assert any("allkeys-lru" in r for r in report.reasons), report.reasons

            client = redis.Redis.from_url(server.url)
            try:
                client.config_set("maxmemory-policy", "noeviction")
            finally:
                client.close()
            report = await m.health()
            assert report.level is HealthLevel.HEALTHY, report.reasons
            assert report.persistence is True
    finally:
        server.close()


async def test_health_reports_only_redis_errors_as_unreachable(
    settings: TaskSettings, monitor: Monitor
) -> None:
    """Issue 16: a bug or bad data is not an outage (nor a redis_unreachable alert)."""
    from vocalborn_tasks.alerts import evaluate_alerts
    from vocalborn_tasks.embedded import free_port

    # A worker heartbeat that does not parse (a pid that is not a number): a ValueError.
    client = redis.Redis.from_url(settings.backend_url)
    name = f"bad-{uuid.uuid4().hex}@test"
    try:
        client.sadd(settings.key("workers"), name)
        # With "tags", as every live heartbeat has: the module's worker reaps a registered
        # name whose hash lacks them (a dead worker) within 0.5 s, which raced the calls below.
        client.hset(
            settings.key("worker", name), mapping={"hostname": name, "pid": "x", "tags": "[]"}
        )
        with pytest.raises(ValueError, match="invalid literal"):
            await monitor.health()
        with pytest.raises(ValueError, match="invalid literal"):
            await evaluate_alerts(monitor, sinks=[])
    finally:
        client.srem(settings.key("workers"), name)
        client.delete(settings.key("worker", name))
        client.close()

    # Nobody listening on the port: that is what unreachable means.
    closed = TaskSettings(redis_url=f"redis://127.0.0.1:{free_port()}", redis_connect_timeout_s=2)
    async with Monitor(closed) as m:
        report = await m.health()
    assert not report.reachable and report.level is HealthLevel.UNHEALTHY
