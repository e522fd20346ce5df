"""The systems compared by ``bench_throughput.py`` and ``bench_latency.py``.

A *group* is one worker configuration (a command that starts the worker processes); each
group has one or more *clients*, measured one after the other against the same workers. A
client warms up (which also waits for the workers to be ready), calls ``begin()`` right
before the measured phase, then either submits ``n`` tasks and awaits them all
(``throughput``) or does ``n`` sequential round trips (``latency``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _harness import library_worker_cmd

Begin = Callable[[], None]
Client = Callable[[str, str, int, Begin], dict[str, Any]]

WARMUP = 20
TIMEOUT_S = 300.0


def _result(
    mode: str, n: int, t0: float, t_enq: float, t_end: float, lat: list[float]
) -> dict[str, Any]:
    if mode == "latency":
        return {"latencies_ms": lat}
    return {"enqueue_s": t_enq - t0, "total_s": t_end - t0, "n": n}


# --- clients --------------------------------------------------------------------------------
def facade_client(url: str, mode: str, n: int, begin: Begin) -> dict[str, Any]:
    """TaskManager.submit + wait_for_result (all waits gathered for throughput)."""
    from noop_worker import noop

    from vocalborn_tasks import TaskManager, TaskSettings

    async def run() -> dict[str, Any]:
        async with TaskManager(TaskSettings(redis_url=url)) as manager:
            for _ in range(WARMUP):
                await manager.wait_for_result(await manager.submit(noop), timeout=TIMEOUT_S)
            begin()
            lat: list[float] = []
            t0 = time.perf_counter()
            if mode == "latency":
                for _ in range(n):
                    s = time.perf_counter()
                    await manager.wait_for_result(await manager.submit(noop), timeout=TIMEOUT_S)
                    lat.append((time.perf_counter() - s) * 1000)
                return _result(mode, n, t0, t0, time.perf_counter(), lat)
            handles = [await manager.submit(noop) for _ in range(n)]
            t_enq = time.perf_counter()
            await asyncio.gather(*(manager.wait_for_result(h, timeout=TIMEOUT_S) for h in handles))
            return _result(mode, n, t0, t_enq, time.perf_counter(), lat)

    return asyncio.run(run())


def _celery_loop(send: Callable[[], Any], mode: str, n: int, begin: Begin) -> dict[str, Any]:
    for _ in range(WARMUP):
        send().get(timeout=TIMEOUT_S)
    begin()
    lat: list[float] = []
    t0 = time.perf_counter()
    if mode == "latency":
        for _ in range(n):
            s = time.perf_counter()
            send().get(timeout=TIMEOUT_S)
            lat.append((time.perf_counter() - s) * 1000)
        return _result(mode, n, t0, t0, time.perf_counter(), lat)
    results = [send() for _ in range(n)]
    t_enq = time.perf_counter()
    for r in results:
        r.get(timeout=TIMEOUT_S)
    return _result(mode, n, t0, t_enq, time.perf_counter(), lat)


def celery_library_app_client(url: str, mode: str, n: int, begin: Begin) -> dict[str, Any]:
    """Raw Celery (send_task + AsyncResult.get()) on the library's app and worker settings."""
    from vocalborn_tasks import TaskSettings, create_celery_app

    app = create_celery_app(TaskSettings(redis_url=url))
    try:
        return _celery_loop(
            lambda: app.send_task("bench.noop", kwargs={}, queue="health"), mode, n, begin
        )
    finally:
        app.close()


def celery_plain_client(url: str, mode: str, n: int, begin: Begin) -> dict[str, Any]:
    """Raw Celery with default settings: apply_async + AsyncResult.get()."""
    os.environ["BENCH_REDIS_URL"] = url
    import celery_plain

    return _celery_loop(celery_plain.noop.apply_async, mode, n, begin)


def taskiq_client(url: str, mode: str, n: int, begin: Begin) -> dict[str, Any]:
    """taskiq: kiq() + wait_result(check_interval=1 ms), awaited in order."""
    os.environ["BENCH_REDIS_URL"] = url
    import taskiq_app

    async def run() -> dict[str, Any]:
        await taskiq_app.broker.startup()
        try:
            for _ in range(WARMUP):
                t = await taskiq_app.noop.kiq()
                await t.wait_result(check_interval=0.001, timeout=TIMEOUT_S)
            begin()
            lat: list[float] = []
            t0 = time.perf_counter()
            if mode == "latency":
                for _ in range(n):
                    s = time.perf_counter()
                    t = await taskiq_app.noop.kiq()
                    await t.wait_result(check_interval=0.001, timeout=TIMEOUT_S)
                    lat.append((time.perf_counter() - s) * 1000)
                return _result(mode, n, t0, t0, time.perf_counter(), lat)
            tasks = [await taskiq_app.noop.kiq() for _ in range(n)]
            t_enq = time.perf_counter()
            for t in tasks:
                await t.wait_result(check_interval=0.001, timeout=TIMEOUT_S)
            return _result(mode, n, t0, t_enq, time.perf_counter(), lat)
        finally:
            await taskiq_app.broker.shutdown()

    return asyncio.run(run())


def dramatiq_client(url: str, mode: str, n: int, begin: Begin) -> dict[str, Any]:
    """dramatiq: send() + Message.get_result(block=True), awaited in order."""
    os.environ["BENCH_REDIS_URL"] = url
    import dramatiq_app

    ms = int(TIMEOUT_S * 1000)
    for _ in range(WARMUP):
        dramatiq_app.noop.send().get_result(block=True, timeout=ms)
    begin()
    lat: list[float] = []
    t0 = time.perf_counter()
    if mode == "latency":
        for _ in range(n):
            s = time.perf_counter()
            dramatiq_app.noop.send().get_result(block=True, timeout=ms)
            lat.append((time.perf_counter() - s) * 1000)
        return _result(mode, n, t0, t0, time.perf_counter(), lat)
    msgs = [dramatiq_app.noop.send() for _ in range(n)]
    t_enq = time.perf_counter()
    for m in msgs:
        m.get_result(block=True, timeout=ms)
    return _result(mode, n, t0, t_enq, time.perf_counter(), lat)


# --- groups ---------------------------------------------------------------------------------
@dataclass
class Group:
    name: str
    cmd: list[str]
    clients: list[tuple[str, Client]] = field(default_factory=list)


def _tool(name: str) -> str:
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


def groups(include_peers: bool = True) -> list[Group]:
    out = [
        Group(
            "library worker, prefork 2 (library defaults)",
            library_worker_cmd(pool="prefork", concurrency=2),
            [
                ("vocalborn-tasks TaskManager, prefork 2", facade_client),
                ("Celery get(), library settings, prefork 2", celery_library_app_client),
            ],
        ),
        Group(
            "library worker, solo",
            library_worker_cmd(pool="solo", concurrency=1),
            [
                ("vocalborn-tasks TaskManager, solo", facade_client),
                ("Celery get(), library settings, solo", celery_library_app_client),
            ],
        ),
        Group(
            "celery defaults, prefork 2",
            [_tool("celery"), "-A", "celery_plain", "worker", "--pool", "prefork", "-c", "2"],
            [("Celery defaults, prefork 2, get()", celery_plain_client)],
        ),
        Group(
            "celery defaults, solo",
            [_tool("celery"), "-A", "celery_plain", "worker", "--pool", "solo"],
            [("Celery defaults, solo, get()", celery_plain_client)],
        ),
    ]
    if not include_peers:
        return out
    try:
        import taskiq_redis  # noqa: F401

        out.append(
            Group(
                "taskiq, 2 workers",
                [_tool("taskiq"), "worker", "taskiq_app:broker", "--workers", "2"],
                [("taskiq + taskiq-redis, 1 ms result checks", taskiq_client)],
            )
        )
    except ImportError:
        print("taskiq/taskiq-redis not installed: skipped (pip install -e '.[bench]')")
    try:
        import dramatiq  # noqa: F401

        for threads in (1, 8):
            out.append(
                Group(
                    f"dramatiq 2 x {threads}",
                    [
                        _tool("dramatiq"),
                        "dramatiq_app",
                        "--processes",
                        "2",
                        "--threads",
                        str(threads),
                    ],
                    [(f"dramatiq, 2 processes x {threads} thread(s)", dramatiq_client)],
                )
            )
    except ImportError:
        print("dramatiq not installed: skipped (pip install -e '.[bench]')")
    return out
