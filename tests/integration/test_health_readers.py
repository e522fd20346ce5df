"""The health check's two readers (async Monitor, SyncHealthReader) against one real server:
the same state gives the same report, and the synchronous path starts no event loop.

The module works in its own databases (8 and 9). Its worker consumes health and maintenance
only, so ai_analysis holds waiting work without a consumer (an UNHEALTHY report, a
``no_workers`` alert) while the worker runs real health checks (run records).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
import redis

from support import WorkerProcess, flush, wait_for_runs
from vocalborn_tasks import HealthLevel, Monitor, TaskManager, TaskSettings, task_definition
from vocalborn_tasks.alerts import Alert, CallableAlertSink, evaluate_alerts_sync
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.health import HealthReport, SyncHealthReader
from vocalborn_tasks.tasks import TaskContext, health_check

pytestmark = pytest.mark.integration


@task_definition(name="tests.health.waiting", queue="ai_analysis")
def waiting(ctx: TaskContext, n: int) -> None:
    """Never runs: no worker of this module consumes ai_analysis."""


@pytest.fixture(scope="module")
def settings(redis_url: str) -> TaskSettings:
    s = TaskSettings(
        redis_url=redis_url,
        redis_db_broker=8,
        redis_db_backend=9,
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
    proc = WorkerProcess(
        settings,
        name="health-readers",
        concurrency=1,
        queues="health,maintenance",
        log_dir=tmp_path_factory.mktemp("logs"),
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


#: What changes between two reads of an unchanged state: clocks, round trips, the server's
#: own memory use (our reads and the heartbeats allocate).
_VOLATILE = {
    "checked_at",
    "broker_latency_ms",
    "backend_latency_ms",
    "used_memory_bytes",
    "oldest_message_age_s",
}


def _comparable(report: HealthReport) -> dict[str, Any]:
    data = report.model_dump(exclude=_VOLATILE)
    for q in data["queues"]:
        # An age is a clock reading; that there is one (or none) is part of the report.
        q["oldest_age_s"] = q["oldest_age_s"] is not None
    return data


async def test_both_readers_give_the_same_report_and_task_stats(
    settings: TaskSettings, worker: WorkerProcess
) -> None:
    async with TaskManager(settings) as manager:
        for n in range(3):
            await manager.submit(waiting, n)
        # Real run records, written by the worker's health checks (which take the sync path).
        pings = [
            await manager.wait_for_result(await manager.submit(health_check), timeout=60)
            for _ in range(3)
        ]
    assert [p.alerts for p in pings] == [["firing:no_workers:ai_analysis"], [], []], (
        worker.log_tail()
    )
    # A busy worker process writes its runs' statistics folded, every 0.5 s: read them whole.
    await wait_for_runs(settings, health_check.name, "success", 3)

    with SyncHealthReader(settings) as reader:
        async with Monitor(settings) as monitor:
            # Alternate the readers: each sees the drain observations the other left.
            first = await monitor.health()
            second = reader.health()
            third = await monitor.health()
            async_stats = await monitor.get_task_type_stats()
            sync_stats = reader.get_task_type_stats()

    assert first.level is HealthLevel.UNHEALTHY
    assert "queue ai_analysis has no live worker (3 waiting)" in first.reasons
    assert first.workers == 1
    (analysis,) = [q for q in first.queues if q.name == "ai_analysis"]
    assert analysis.length == 3 and analysis.consumers == 0 and analysis.oldest_age_s is not None
    assert _comparable(second) == _comparable(first)
    assert _comparable(third) == _comparable(first)

    assert sync_stats == async_stats
    (checks,) = [t for t in sync_stats if t.task == health_check.name]
    assert checks.succeeded >= 3 and checks.queue == "health"


async def test_both_readers_agree_on_unreachable_and_on_bad_data(settings: TaskSettings) -> None:
    closed = TaskSettings(redis_url=f"redis://127.0.0.1:{free_port()}", redis_connect_timeout_s=2)
    async with Monitor(closed) as monitor:
        async_report = await monitor.health()
    with SyncHealthReader(closed) as reader:
        sync_report = reader.health()
    for report in (async_report, sync_report):
        assert not report.reachable and report.level is HealthLevel.UNHEALTHY
        assert report.reasons[0].startswith("health: cannot reach Redis at 127.0.0.1:")

    # A heartbeat that does not parse is a bug or bad data, not an outage, on either path.
    client = redis.Redis.from_url(settings.backend_url)
    name = f"bad-{uuid.uuid4().hex}@test"
    try:
        client.sadd(settings.key("workers"), name)
        # With "tags", as every live heartbeat has: the module's worker reaps a registered
        # name whose hash lacks them (a dead worker) within 0.5 s, which raced the calls below.
        client.hset(
            settings.key("worker", name), mapping={"hostname": name, "pid": "x", "tags": "[]"}
        )
        with SyncHealthReader(settings) as reader, pytest.raises(ValueError, match="invalid"):
            reader.health()
        with pytest.raises(ValueError, match="invalid literal"):
            evaluate_alerts_sync(settings, sinks=[])
    finally:
        client.srem(settings.key("workers"), name)
        client.delete(settings.key("worker", name))
        client.close()


def _forget_alerts(settings: TaskSettings) -> None:
    """Drop the stored alert state: the next evaluation notifies what holds, once."""
    client = redis.Redis.from_url(settings.backend_url)
    try:
        client.delete(settings.key("alerts", "state"))
    finally:
        client.close()


def _loops_created_while(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` in a fresh thread, counting every event loop constructed meanwhile.

    A profile hook on that thread sees each call of ``BaseEventLoop.__init__`` (every asyncio
    loop, selector or proactor, goes through it): no patching, nothing replaced.
    """
    from asyncio.base_events import BaseEventLoop

    init = BaseEventLoop.__init__.__code__
    created: list[int] = []
    result: list[Any] = []
    errors: list[BaseException] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is init:
            created.append(1)

    def run() -> None:
        sys.setprofile(profile)
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0], len(created)


def test_the_health_task_path_starts_no_event_loop(
    settings: TaskSettings, worker: WorkerProcess
) -> None:
    # The probe is honest: it counts the loop asyncio.run makes.
    _, made = _loops_created_while(lambda: asyncio.run(asyncio.sleep(0)))
    assert made == 1

    _forget_alerts(settings)
    sent: list[Alert] = []
    sinks = [CallableAlertSink(sent.append)]
    notices, made = _loops_created_while(lambda: evaluate_alerts_sync(settings, sinks))
    assert made == 0
    assert [n.key for n in notices] == ["no_workers:ai_analysis"]
    assert sent == notices


async def test_the_sync_evaluation_runs_inside_a_running_loop(
    settings: TaskSettings, worker: WorkerProcess
) -> None:
    """``asyncio.run`` refuses a thread whose loop runs; the sync path has nothing to refuse."""
    assert asyncio.get_running_loop() is not None
    _forget_alerts(settings)
    notices = evaluate_alerts_sync(settings, sinks=[])
    assert [n.key for n in notices] == ["no_workers:ai_analysis"]
