"""Rules shared by health verdicts and alerts: "no live worker", and the topology's issues."""

from __future__ import annotations

from datetime import UTC, datetime

from vocalborn_tasks.alerts import current_alerts
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.health import HealthLevel, HealthReport, redis_topology
from vocalborn_tasks.monitor import QueueStats, queues_without_worker

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _q(name: str, length: int, consumers: int) -> QueueStats:
    return QueueStats(name=name, length=length, consumers=consumers)


def test_a_queue_needs_a_worker_when_work_waits_or_it_is_required() -> None:
    queues = [
        _q("waiting", 3, 0),  # work and nobody: unserved
        _q("required", 0, 0),  # nobody, and it must have someone: unserved
        _q("idle", 0, 0),  # nobody, nothing waits, not required: fine
        _q("served", 5, 1),  # someone consumes it: fine
    ]
    unserved = queues_without_worker(queues, required=["required", "served"])
    assert [q.name for q in unserved] == ["waiting", "required"]
    assert queues_without_worker([], required=["x"]) == []


def test_topology_issues_are_alerts_keyed_by_kind() -> None:
    """The health verdict's topology reasons reach the alert sinks, one stable key each."""
    settings = TaskSettings(redis_replica_acks=1, alert_queue_backlog=None, alert_no_workers=False)
    lone = {"role": "master", "connected_slaves": 0}
    unfenced = redis_topology(
        settings,
        replication_info=lone,
        min_replicas={"min-replicas-to-write": "0", "min-replicas-max-lag": "10"},
    )
    report = HealthReport(level=HealthLevel.DEGRADED, topology=unfenced, checked_at=NOW)
    holding = current_alerts(settings, report)
    assert [(h.key, h.rule) for h in holding] == [
        ("redis_topology:replicas", "redis_topology"),
        ("redis_topology:fencing", "redis_topology"),
    ]
    assert holding[1].message.startswith(
        "min-replicas-to-write is 0: a resumed old master can acknowledge writes"
    )
    # A lone server asked for no acknowledgement: nothing to alert on.
    quiet = TaskSettings(alert_queue_backlog=None, alert_no_workers=False)
    alone = redis_topology(quiet, replication_info=lone, min_replicas=None)
    report = HealthReport(level=HealthLevel.HEALTHY, topology=alone, checked_at=NOW)
    assert current_alerts(quiet, report) == []
