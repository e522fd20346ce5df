"""The health check's decisions are pure functions of what a reader found (either reader)."""

from __future__ import annotations

from datetime import UTC, datetime

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.health import (
    HealthLevel,
    QueueStats,
    WorkerStats,
    drain_verdict,
    health_report,
    task_type_stats,
)
from vocalborn_tasks.stats import RunRecord

NOW = 1_000_000.0


def _worker(processed: int, active: int = 0, concurrency: int = 1) -> WorkerStats:
    return WorkerStats(
        hostname="w@h",
        pid=1,
        concurrency=concurrency,
        queues=["q"],
        active=active,
        reserved=active,
        processed=processed,
        rss_kb=0,
        last_seen=datetime.fromtimestamp(NOW, UTC),
    )


def test_drain_verdicts() -> None:
    q = QueueStats(name="q", length=2, consumers=1)
    w = [_worker(5)]
    empty = QueueStats(name="q", length=0, consumers=1)
    assert drain_verdict(empty, w, "", {}, NOW, 120) == (True, True)
    assert drain_verdict(q, w, "a", {}, NOW, 120) == (None, True)  # first sighting
    assert drain_verdict(q, [], "a", {"head": "a"}, NOW, 120) == (None, True)  # no consumer
    assert drain_verdict(q, w, "b", {"head": "a"}, NOW, 120) == (True, True)  # head moved
    recent = {"head": "a", "processed": "5", "ts": repr(NOW - 10), "verdict": "0"}
    assert drain_verdict(q, w, "a", recent, NOW, 120) == (False, False)  # keep the old one
    stale = {**recent, "ts": repr(NOW - 200)}
    assert drain_verdict(q, w, "a", stale, NOW, 120) == (False, True)  # stuck, slot free
    assert drain_verdict(q, [_worker(6)], "a", stale, NOW, 120) == (True, True)  # moved
    assert drain_verdict(q, [_worker(5, active=1)], "a", stale, NOW, 120) == (True, True)  # busy


def test_health_report_levels_and_reasons() -> None:
    settings = TaskSettings(health_required_queues=["health"])
    queues = [
        QueueStats(name="health", length=0, consumers=0),
        QueueStats(name="maintenance", length=0, consumers=0),
    ]
    report = health_report(
        settings,
        persistence_info={"aof_enabled": 1},
        memory_info={"maxmemory_policy": b"noeviction", "used_memory": 10, "maxmemory": 0},
        workers=[],
        queues=queues,
        broker_ms=1.23456,
        backend_ms=2.0,
        checked_at=datetime.fromtimestamp(NOW, UTC),
    )
    assert report.level is HealthLevel.UNHEALTHY
    assert report.reasons == ["queue health has no live worker (0 waiting)"]
    assert report.broker_latency_ms == 1.235 and report.persistence is True


def test_task_type_stats_from_run_records() -> None:
    runs = [
        RunRecord("a", "t", "q", "w", NOW, 1.0, "success"),
        RunRecord("b", "t", "q", "w", NOW, 3.0, "failure"),
        RunRecord("c", "t", "q", "w", NOW, 0.1, "retry"),
    ]
    (stats,) = task_type_stats({"t": ("q", runs)}, 60.0)
    assert (stats.runs, stats.succeeded, stats.failed, stats.retried) == (3, 1, 1, 1)
    assert stats.failure_rate == 0.5 and stats.p50_s == 2.0 and stats.mean_s == 2.0
