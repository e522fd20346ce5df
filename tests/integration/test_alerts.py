"""Alerts end to end: the periodic health task, run by a real worker, posts to a real webhook
once when a queue loses its only worker and once when it comes back.

Two workers in the module's own databases (4 and 5): one for ai_analysis (stopped to cause
the outage) and one for health and maintenance (which keeps running the health checks).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from support import WorkerProcess, async_wait_until, flush
from vocalborn_tasks import Monitor, TaskManager, TaskSettings
from vocalborn_tasks.tasks import health_check

pytestmark = pytest.mark.integration


class Hook:
    """A real HTTP endpoint on loopback that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                hook.received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def settings(redis_url: str, hook: Hook) -> TaskSettings:
    s = TaskSettings(
        redis_url=redis_url,
        redis_db_broker=4,
        redis_db_backend=5,
        celery_log_level="INFO",
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
        alert_webhook_url=hook.url,
        alert_cooldown_s=0.0,
    )
    flush(s)
    return s


async def run_health_task(manager: TaskManager) -> list[str]:
    handle = await manager.submit(health_check)
    return (await manager.wait_for_result(handle, timeout=30)).alerts


async def consumers(settings: TaskSettings, queue: str) -> int:
    async with Monitor(settings) as monitor:
        (stats,) = await monitor.get_queue_stats([queue])
        return stats.consumers


async def _no_consumers(settings: TaskSettings, queue: str) -> bool:
    return await consumers(settings, queue) == 0


async def test_one_alert_per_outage_and_one_recovery_notice(
    settings: TaskSettings, hook: Hook, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("logs")
    analysis = WorkerProcess(settings, name="alerts-ai", queues="ai_analysis", log_dir=logs)
    checker = WorkerProcess(
        settings, name="alerts-health", queues="health,maintenance", log_dir=logs
    )
    try:
        for w in (analysis, checker):  # started side by side, then each awaited (heartbeat)
            w.start(wait=False)
        for w in (analysis, checker):
            w.wait_ready()
        async with TaskManager(settings) as manager:
            assert await run_health_task(manager) == []
            assert hook.received == []

            analysis.stop()
            # Polled without blocking the loop (was time.sleep inside this async test).
            await async_wait_until(
                lambda: _no_consumers(settings, "ai_analysis"),
                settings.worker_dead_after_s + 5,
                0.2,
                "the stopped worker to leave the queue",
            )
            outage = [await run_health_task(manager) for _ in range(3)]
            assert outage == [["firing:no_workers:ai_analysis"], [], []], checker.log_tail()
            assert len(hook.received) == 1
            alert = hook.received[0]
            assert alert["status"] == "firing"
            assert alert["key"] == "no_workers:ai_analysis"
            assert alert["rule"] == "no_workers"
            assert "ai_analysis" in alert["message"]

            analysis.start()
            recovery = [await run_health_task(manager) for _ in range(2)]
            assert recovery == [["resolved:no_workers:ai_analysis"], []]
            assert [a["status"] for a in hook.received] == ["firing", "resolved"]
            assert hook.received[1]["key"] == "no_workers:ai_analysis"
    finally:
        analysis.stop()
        checker.stop()


async def test_a_slow_webhook_does_not_stall_the_event_loop() -> None:
    """Issue 16: the webhook POST runs off the loop. Measured as loop progress while the
    endpoint holds the request, not as wall time."""
    import asyncio

    from vocalborn_tasks.alerts import WebhookSink, evaluate_alerts
    from vocalborn_tasks.embedded import free_port

    received = threading.Event()
    release = threading.Event()
    released_by_test: list[bool] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.set()
            released_by_test.append(release.wait(10))  # held until the test lets it go
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    # An unreachable server: the redis_unreachable notice goes straight to the sinks.
    settings = TaskSettings(redis_url=f"redis://127.0.0.1:{free_port()}", redis_connect_timeout_s=2)
    try:
        async with Monitor(settings) as monitor:
            evaluation = asyncio.create_task(
                evaluate_alerts(monitor, sinks=[WebhookSink(url, timeout=20)])
            )
            assert await asyncio.to_thread(received.wait, 15), "the webhook was never called"
            # We got here while the POST is held: the loop ran. It keeps running other work:
            for _ in range(100):
                await asyncio.sleep(0)
            assert not evaluation.done()
            assert not released_by_test  # the endpoint still holds the request
            release.set()
            notices = await asyncio.wait_for(evaluation, 15)
        assert [n.key for n in notices] == ["redis_unreachable"]
        assert released_by_test == [True]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
