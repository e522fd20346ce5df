"""The worker's statistics fold (issue 21): what a busy process writes equals what it ran.

The recorder is driven directly (no worker): a run's end goes through ``finish_ops`` as the
result backend calls it, the store's verdict through ``Finish.settle``, then a flush.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from vocalborn_tasks import TaskSettings
from vocalborn_tasks.stats import parse_run
from vocalborn_tasks.worker.factory import create_celery_app
from vocalborn_tasks.worker.stats_recorder import _fold, recorder_of

NAME = "bench.fold"


@pytest.fixture
def settings(base_settings: TaskSettings) -> TaskSettings:
    return base_settings.model_copy(update={"key_prefix": "vbfold", "stats_keep": 10})


@pytest.fixture
def client(settings: TaskSettings) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(settings.backend_url, decode_responses=True)
    for key in c.scan_iter(f"{settings.key_prefix}:*"):
        c.delete(key)
    yield c
    c.close()


def _task(app: Any) -> Any:
    request = SimpleNamespace(delivery_info={"routing_key": "health"}, hostname="w@test")
    return SimpleNamespace(name=NAME, app=app, request=request)


def _run(recorder: Any, app: Any, task_id: str, state: str = "SUCCESS") -> Any:
    recorder.on_prerun(sender=_task(app), task_id=task_id)
    return recorder.finish_ops(task_id, state, {"ok": 1})


def test_fold_sums_counts_and_keeps_the_order_of_writes() -> None:
    slots: dict[tuple[str, ...], list[str]] = {}
    for score, member in (("1.0", "a"), ("2.0", "b")):
        _fold(slots, ["ZADD", "runs", score, member])
        _fold(slots, ["ZREMRANGEBYRANK", "runs", "0", "-11"])
        _fold(slots, ["EXPIRE", "runs", "100"])
        _fold(slots, ["HINCRBY", "count", "t|success", "1"])
        _fold(slots, ["HINCRBYFLOAT", "hist", "sum", "0.25"])
    commands = list(slots.values())
    assert commands == [
        ["ZADD", "runs", "1.0", "a", "2.0", "b"],
        ["HINCRBY", "count", "t|success", "2"],
        ["HINCRBYFLOAT", "hist", "sum", "0.5"],
        ["ZREMRANGEBYRANK", "runs", "0", "-11"],
        ["EXPIRE", "runs", "100"],
    ]


def test_a_busy_process_writes_the_same_statistics_folded(
    settings: TaskSettings, client: redis.Redis
) -> None:
    app = create_celery_app(settings, register=False)
    recorder = recorder_of(app)
    assert recorder is not None
    # The first run of a quiet process goes with its store, as before (no staleness).
    first = _run(recorder, app, "t0")
    assert first.stats is not None and not first.pending
    assert len(json.loads(first.stats)) >= 9
    # The next ones, within the interval, only leave stats:running in the store.
    finishes = [_run(recorder, app, f"t{i}") for i in range(1, 13)]
    finishes.append(_run(recorder, app, "cancelled"))
    for finish in finishes:
        assert finish.pending
        assert [c[0] for c in json.loads(finish.stats)] == ["HDEL"]
        assert finish.stats == finish.if_revoked
    for finish in finishes[:-1]:
        finish.settle(revoked=False)
    finishes[-1].settle(revoked=True)  # a cancel was stored first: it counts as revoked
    finishes[-1].settle(revoked=False)  # settled once only
    recorder.flush()

    count = client.hgetall(settings.key("stats", "count"))
    assert count == {f"{NAME}|success": "12", f"{NAME}|revoked": "1"}
    hist = client.hgetall(settings.key("stats", "hist", NAME))
    buckets = {k: int(v) for k, v in hist.items() if k not in ("count", "sum")}
    assert hist["count"] == "13" and sum(buckets.values()) == 13
    assert client.hget(settings.key("stats", "tasks"), NAME) == "health"
    runs = [parse_run(NAME, m) for m in client.zrange(settings.key("stats", "runs", NAME), 0, -1)]
    assert len(runs) == settings.stats_keep  # trimmed after the folded ZADD
    assert {r.task_id for r in runs if r is not None} >= {"t12", "cancelled"}
    assert client.ttl(settings.key("stats", "runs", NAME)) > 0
    recorder.flush()  # nothing left: no second count
    assert client.hget(settings.key("stats", "count"), f"{NAME}|success") == "12"


def test_a_fold_the_server_refused_is_sent_with_the_next(
    settings: TaskSettings, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_celery_app(settings, register=False)
    recorder = recorder_of(app)
    assert recorder is not None
    _run(recorder, app, "quiet")  # written with its store: the next one is folded
    _run(recorder, app, "a").settle(revoked=False)

    class Down:
        def pipeline(self, **_: Any) -> Any:
            raise redis.ConnectionError("down")

    batch = recorder._batch
    with monkeypatch.context() as m:
        m.setattr(batch, "client", Down())
        recorder.flush()
    _run(recorder, app, "b").settle(revoked=False)
    recorder.flush()
    assert client.hget(settings.key("stats", "count"), f"{NAME}|success") == "2"


def test_a_process_exiting_writes_its_fold(settings: TaskSettings, client: redis.Redis) -> None:
    app = create_celery_app(settings, register=False)
    recorder = recorder_of(app)
    assert recorder is not None
    _run(recorder, app, "quiet")
    _run(recorder, app, "last").settle(revoked=False)
    recorder.flush_before_exit(sender=None)  # as Celery's worker_process_shutdown calls it
    assert client.hget(settings.key("stats", "count"), f"{NAME}|success") == "1"
