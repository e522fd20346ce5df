"""Prometheus metrics, read from Redis at scrape time (``pip install 'vocalborn-tasks[metrics]'``).

Nothing is counted in the scraping process: workers record their runs in Redis
(:mod:`vocalborn_tasks.stats`) and publish heartbeats, and each scrape reads them. So any
number of exporters (``vocalborn-tasks metrics --port 9808``, or :func:`metrics_asgi_app`
mounted in the host's web app) report the same numbers, and a restart loses nothing.

Series (all prefixed ``vocalborn_``):

=========================================  =========  ==========================================
name                                       type       labels
=========================================  =========  ==========================================
``up``                                     gauge      (1 when Redis answered this scrape)
``queue_length``                           gauge      queue
``queue_oldest_message_age_seconds``       gauge      queue
``queue_consumers``                        gauge      queue
``workers``                                gauge      (live workers)
``worker_pool_processes``                  gauge      worker
``worker_active_tasks``                    gauge      worker
``worker_processed_tasks``                 gauge      worker (since the worker started)
``worker_memory_bytes``                    gauge      worker
``tasks_total``                            counter    task, state (success/failure/retry/...)
``task_retries_total``                     counter    task
``task_duration_seconds``                  histogram  task
``analysis_score``                         histogram  dimension (overall, fluency, ...)
``analysis_level_total``                   counter    level
``redis_used_memory_bytes``                gauge
``redis_maxmemory_bytes``                  gauge
``redis_connected_replicas``               gauge      (replicas a confirmed write can count on)
``redis_replica_max_lag_seconds``          gauge      (slowest replica's last ack; 0: none)
``health_status``                          gauge      (0 healthy, 1 degraded, 2 unhealthy)
=========================================  =========  ==========================================
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .config import TaskSettings
from .stats import DURATION_BUCKETS, SCORE_BUCKETS, SCORE_FIELDS

__all__ = ["METRIC_NAMES", "VocalbornCollector", "build_registry", "metrics_asgi_app", "serve"]

logger = logging.getLogger(__name__)

#: Every series name this module exposes (histograms and counters add their usual suffixes).
METRIC_NAMES: tuple[str, ...] = (
    "vocalborn_up",
    "vocalborn_queue_length",
    "vocalborn_queue_oldest_message_age_seconds",
    "vocalborn_queue_consumers",
    "vocalborn_workers",
    "vocalborn_worker_pool_processes",
    "vocalborn_worker_active_tasks",
    "vocalborn_worker_processed_tasks",
    "vocalborn_worker_memory_bytes",
    "vocalborn_tasks_total",
    "vocalborn_task_retries_total",
    "vocalborn_task_duration_seconds",
    "vocalborn_analysis_score",
    "vocalborn_analysis_level_total",
    "vocalborn_redis_used_memory_bytes",
    "vocalborn_redis_maxmemory_bytes",
    "vocalborn_redis_connected_replicas",
    "vocalborn_redis_replica_max_lag_seconds",
    "vocalborn_health_status",
)

_LEVEL_VALUE = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass
class _Snapshot:
    up: bool = False
    report: Any = None
    workers: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    hists: dict[str, dict[str, str]] = field(default_factory=dict)
    scores: dict[str, str] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _gather(settings: TaskSettings) -> _Snapshot:
    from .monitor import Monitor

    snap = _Snapshot()
    async with Monitor(settings) as monitor:
        report = await monitor.health()
        snap.report = report
        if not report.reachable:
            return snap
        snap.up = True
        snap.workers = await monitor.get_worker_stats()
        _, backend = monitor._clients()
        key = settings.key
        names = [_text(n) for n in await backend.hkeys(key("stats", "tasks"))]
        pipe = backend.pipeline(transaction=False)
        pipe.hgetall(key("stats", "count"))
        pipe.hgetall(key("stats", "scores"))
        pipe.hgetall(key("stats", "levels"))
        for name in names:
            pipe.hgetall(key("stats", "hist", name))
        counts, scores, levels, *hists = await pipe.execute()
        snap.counts = {_text(k): int(v) for k, v in counts.items()}
        snap.scores = {_text(k): _text(v) for k, v in scores.items()}
        snap.levels = {_text(k): int(v) for k, v in levels.items()}
        snap.hists = {
            name: {_text(k): _text(v) for k, v in h.items()}
            for name, h in zip(names, hists, strict=True)
        }
    return snap


def _histogram(
    raw: dict[str, str], bounds: tuple[float, ...], prefix: str = ""
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and sum from the per-bucket counts the workers keep."""
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for bound in (*bounds, math.inf):
        cumulative += float(raw.get(f"{prefix}{float(bound)!r}", 0))
        buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), cumulative))
    return buckets, float(raw.get(f"{prefix}sum", 0.0))


class VocalbornCollector:
    """A prometheus-client collector that reads the system's state from Redis at each scrape.

    Each scrape opens its own short-lived connections (it runs in the exporter's thread).
    """

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings

    def describe(self) -> list[Any]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        try:
            snap = asyncio.run(_gather(self.settings))
        except Exception as exc:  # never fail a scrape: report down instead
            logger.warning("metrics: scrape failed: %s", exc)
            snap = _Snapshot()
        yield GaugeMetricFamily("vocalborn_up", "1 when Redis answered this scrape", snap.up)
        report = snap.report
        if report is not None:
            yield GaugeMetricFamily(
                "vocalborn_health_status",
                "Health verdict: 0 healthy, 1 degraded, 2 unhealthy",
                _LEVEL_VALUE[report.level.value],
            )
        if not snap.up or report is None:
            return
        length = GaugeMetricFamily("vocalborn_queue_length", "Waiting messages", labels=["queue"])
        age = GaugeMetricFamily(
            "vocalborn_queue_oldest_message_age_seconds",
            "Age of the oldest waiting message (0 when empty)",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "vocalborn_queue_consumers", "Live workers consuming the queue", labels=["queue"]
        )
        for q in report.queues:
            length.add_metric([q.name], q.length)
            age.add_metric([q.name], q.oldest_age_s or 0.0)
            consumers.add_metric([q.name], q.consumers)
        yield from (length, age, consumers)
        yield GaugeMetricFamily("vocalborn_workers", "Live workers", len(snap.workers))
        pool = GaugeMetricFamily("vocalborn_worker_pool_processes", "Pool size", labels=["worker"])
        active = GaugeMetricFamily(
            "vocalborn_worker_active_tasks", "Tasks running", labels=["worker"]
        )
        processed = GaugeMetricFamily(
            "vocalborn_worker_processed_tasks",
            "Tasks processed since the worker started",
            labels=["worker"],
        )
        memory = GaugeMetricFamily(
            "vocalborn_worker_memory_bytes", "Resident memory incl. pool", labels=["worker"]
        )
        for w in snap.workers:
            pool.add_metric([w.hostname], w.concurrency)
            active.add_metric([w.hostname], w.active)
            processed.add_metric([w.hostname], w.processed)
            memory.add_metric([w.hostname], w.rss_kb * 1024)
        yield from (pool, active, processed, memory)

        tasks = CounterMetricFamily(
            "vocalborn_tasks", "Finished task runs by final state", labels=["task", "state"]
        )
        retries = CounterMetricFamily("vocalborn_task_retries", "Task retries", labels=["task"])
        retried: dict[str, int] = {}
        for key, count in sorted(snap.counts.items()):
            name, _, state = key.rpartition("|")
            tasks.add_metric([name, state], count)
            retried[name] = retried.get(name, 0) + (count if state == "retry" else 0)
        for name, count in sorted(retried.items()):
            retries.add_metric([name], count)  # 0 too: "no retries" is a value, not a gap
        yield from (tasks, retries)

        durations = HistogramMetricFamily(
            "vocalborn_task_duration_seconds", "Task run duration", labels=["task"]
        )
        for name, raw in sorted(snap.hists.items()):
            buckets, total = _histogram(raw, DURATION_BUCKETS)
            durations.add_metric([name], buckets, total)
        yield durations

        scores = HistogramMetricFamily(
            "vocalborn_analysis_score", "Analysis scores (0-100)", labels=["dimension"]
        )
        for dim in SCORE_FIELDS:
            if f"{dim}|count" not in snap.scores:
                continue
            buckets, total = _histogram(snap.scores, SCORE_BUCKETS, prefix=f"{dim}|")
            scores.add_metric([dim], buckets, total)
        yield scores
        levels = CounterMetricFamily(
            "vocalborn_analysis_level", "Analyses by level (1 best .. 5)", labels=["level"]
        )
        for level, count in sorted(snap.levels.items()):
            levels.add_metric([level], count)
        yield levels
        yield GaugeMetricFamily(
            "vocalborn_redis_used_memory_bytes", "Redis used_memory", report.used_memory_bytes or 0
        )
        yield GaugeMetricFamily(
            "vocalborn_redis_maxmemory_bytes",
            "Redis maxmemory (0: none)",
            report.maxmemory_bytes or 0,
        )
        topology = report.topology
        # Compare with REDIS_REPLICA_ACKS: fewer means confirmed writes wait, then fail.
        yield GaugeMetricFamily(
            "vocalborn_redis_connected_replicas",
            "Replicas online and acknowledging within min-replicas-max-lag",
            topology.connected_replicas if topology is not None else 0,
        )
        lags = [r.lag_s for r in topology.replicas if r.lag_s is not None] if topology else []
        yield GaugeMetricFamily(
            "vocalborn_redis_replica_max_lag_seconds",
            "Seconds since the slowest replica acknowledged (0 without replicas)",
            max(lags, default=0),
        )


def build_registry(settings: TaskSettings) -> Any:
    """A fresh ``CollectorRegistry`` holding only :class:`VocalbornCollector`."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(VocalbornCollector(settings))
    return registry


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_asgi_app(settings: TaskSettings) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app serving the metrics, to mount in the host's web app.

    The scrape reads Redis, so it runs in a worker thread and never blocks the event loop::

        app.mount("/metrics", metrics_asgi_app(settings))   # FastAPI / Starlette
    """
    import anyio.to_thread
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = build_registry(settings)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body: bytes = await anyio.to_thread.run_sync(generate_latest, registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def serve(settings: TaskSettings, port: int, address: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread; returns the server.

    Call ``server.shutdown()`` to stop it.
    """
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=build_registry(settings))
    return server
