from __future__ import annotations

from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.worker.factory import create_celery_app, queue_for_task


def test_reliability_defaults() -> None:
    s = TaskSettings(
        redis_url="redis://h:1",
        visibility_timeout_s=900,
        task_time_limit_s=600,
        task_soft_time_limit_s=500,
    )
    app = create_celery_app(s)
    c = app.conf
    assert c.task_acks_late is True
    assert c.task_reject_on_worker_lost is True
    assert c.worker_prefetch_multiplier == 1
    # STARTED is stored by the task runtime with the delivery check, not by Celery.
    assert c.task_track_started is False
    assert c.task_time_limit == 600
    assert c.task_soft_time_limit == 500
    # The visibility timeout is set everywhere kombu and Celery read it.
    assert c.broker_transport_options["visibility_timeout"] == 900
    assert c.result_backend_transport_options["visibility_timeout"] == 900
    assert c.visibility_timeout == 900
    assert c.accept_content == ["json"] and c.result_accept_content == ["json"]
    # Redis keeps a running task reserved across a connection loss: never kill it (issue 10).
    assert c.worker_cancel_long_running_tasks_on_connection_loss is False
    assert c.result_backend_always_retry is True
    assert c.broker_url == "redis://h:1/0"
    assert c.result_backend == "redis://h:1/1"


def test_queues_and_routes() -> None:
    app = create_celery_app(TaskSettings(redis_url="redis://h:1"))
    assert [q.name for q in app.conf.task_queues] == ["ai_analysis", "maintenance", "health"]
    assert queue_for_task("vocalborn.analyze_audio") == "ai_analysis"
    assert queue_for_task("vocalborn.maintenance.cleanup") == "maintenance"
    assert queue_for_task("vocalborn.health.check") == "health"
    assert queue_for_task("host.other") == "ai_analysis"
    for name in (
        "vocalborn.analyze_audio",
        "vocalborn.maintenance.cleanup",
        "vocalborn.health.check",
        "vocalborn.test",
    ):
        assert name in app.tasks


def test_two_apps_do_not_share_settings() -> None:
    a = create_celery_app(TaskSettings(redis_url="redis://a:1"))
    b = create_celery_app(TaskSettings(redis_url="redis://b:2"))
    assert a.conf.broker_url != b.conf.broker_url
    assert a.settings is not b.settings


def test_beat_schedule_has_maintenance_and_health() -> None:
    app = create_celery_app(TaskSettings(redis_url="redis://h:1", health_interval_s=60))
    tasks = {v["task"]: v for v in app.conf.beat_schedule.values()}
    assert tasks["vocalborn.health.check"]["schedule"] == 60
    assert "vocalborn.maintenance.cleanup" in tasks


def test_worker_imports_the_analysis_engine_before_its_pool_starts() -> None:
    # The first analysis after a deploy must not pay numpy/scipy's import (once per child).
    import subprocess
    import sys

    code = """
import sys, types
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.worker.factory import create_celery_app
from vocalborn_tasks.worker.warmup import WarmImportsStep
app = create_celery_app(TaskSettings(redis_url="redis://127.0.0.1:1"))
assert WarmImportsStep in app.steps["worker"]
assert "vocalborn_tasks.analysis" not in sys.modules
WarmImportsStep(types.SimpleNamespace(app=app))
assert "vocalborn_tasks.analysis" in sys.modules and "scipy.fft" in sys.modules
assert "scipy.signal" not in sys.modules  # 48 MiB for two functions: see analysis._signal
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_warm_imports_are_frozen_so_pool_processes_keep_them_shared() -> None:
    # A child's first full collection would otherwise copy every page of inherited objects.
    import subprocess
    import sys

    code = """
import gc, types
from celery.signals import worker_process_init
from vocalborn_tasks.config import TaskSettings
from vocalborn_tasks.worker.factory import create_celery_app
from vocalborn_tasks.worker.warmup import WarmImportsStep
app = create_celery_app(TaskSettings(redis_url="redis://127.0.0.1:1"))
assert gc.get_freeze_count() == 0
WarmImportsStep(types.SimpleNamespace(app=app))
frozen = gc.get_freeze_count()
assert frozen > 50_000, frozen
made_after = [[] for _ in range(1000)]
worker_process_init.send(sender=None)  # what a pool process does as it starts
assert gc.get_freeze_count() >= frozen + 1000  # connected: the child froze what it inherited
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_result_repr_is_short_unless_results_are_logged() -> None:
    """Celery builds a repr of every result (1024 characters by default, ~0.5 ms for an
    analysis); a worker that logs a placeholder instead only needs a short one."""
    hidden = create_celery_app(TaskSettings())
    assert hidden.tasks["vocalborn.analyze_audio"].resultrepr_maxsize == 32
    logged = create_celery_app(TaskSettings(log_task_results=True))
    assert logged.tasks["vocalborn.analyze_audio"].resultrepr_maxsize == 1024


def _success_meta(app: object, task_name: str, result: object) -> str:
    from celery import states

    class Request:
        id = "t-1"
        task = task_name
        children = ()

        def __getattr__(self, name: str) -> None:
            return None

    backend = app.backend  # type: ignore[attr-defined]
    value: str = backend._meta_value("t-1", result, states.SUCCESS, None, Request())
    return value


def test_a_definitions_success_meta_is_written_by_pydantic_core() -> None:
    import json
    import math

    app = create_celery_app(TaskSettings(redis_url="redis://h:1"))
    app.finalize()
    result = {"text": "麵 (tone 4) naïve", "score": float("nan"), "parts": [1, 2.5, None, True]}
    raw = _success_meta(app, "vocalborn.test", result)
    assert "麵" in raw and '"status":"SUCCESS"' in raw  # pydantic-core's form, not kombu's
    meta = json.loads(raw)
    assert meta["task_id"] == "t-1" and meta["status"] == "SUCCESS"
    assert meta["result"]["text"] == result["text"] and meta["result"]["parts"] == result["parts"]
    assert math.isnan(meta["result"]["score"])
    # Same JSON as kombu's encoder writes (spacing and escapes aside).
    kombu = json.loads(app.backend.encode({**meta}))
    assert json.dumps(kombu, sort_keys=True) == json.dumps(meta, sort_keys=True)


def test_other_results_keep_kombus_encoder() -> None:
    import datetime as dt

    from kombu.utils.json import loads

    app = create_celery_app(TaskSettings(redis_url="redis://h:1"))
    when = dt.datetime(2026, 12, 3, 19, 0, tzinfo=dt.UTC)

    @app.task(name="tests.raw_celery_task", shared=False)  # an expert's plain Celery task
    def raw() -> None: ...

    app.finalize()
    # A plain Celery task's result may hold what kombu's encoder tags and its decoder restores.
    meta = loads(_success_meta(app, "tests.raw_celery_task", {"at": when}))
    assert meta["result"]["at"] == when

    # A definition's result that pydantic-core cannot write falls back to kombu's encoder.
    class Reduced:
        def __json__(self) -> dict[str, int]:
            return {"reduced": 1}

    meta = loads(_success_meta(app, "vocalborn.test", {"value": Reduced()}))
    assert meta["result"] == {"value": {"reduced": 1}}
