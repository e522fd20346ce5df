"""The "no live worker" rule: one pure function, shared by health verdicts and alerts."""

from __future__ import annotations

from vocalborn_tasks.monitor import QueueStats, queues_without_worker


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
