from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import vocalborn_tasks

EXPECTED = {
    "Alert",
    "AlertSink",
    "AlertStatus",
    "AnalysisRequest",
    "AnalysisResult",
    "AnalyzerInfo",
    "AudioError",
    "BeatEntry",
    "BrokerAuthError",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeliveryLimitError",
    "Finding",
    "HealthLevel",
    "HealthReport",
    "InvalidRequestError",
    "InvalidSettingsError",
    "ManagerClosedError",
    "Monitor",
    "QueueStats",
    "RecordingAccessError",
    "RecordingResolver",
    "RedisTopology",
    "ReplicaStats",
    "ResultSink",
    "RetryableTaskError",
    "Segment",
    "SentinelStats",
    "Submission",
    "TaskContext",
    "TaskDefinition",
    "TaskError",
    "TaskErrorInfo",
    "TaskFailedError",
    "TaskHandle",
    "TaskLostError",
    "TaskManager",
    "TaskNotFoundError",
    "TaskPosition",
    "TaskRevokedError",
    "TaskSettings",
    "TaskState",
    "TaskStatus",
    "TaskTimeoutError",
    "TaskTypeStats",
    "UnknownReferenceError",
    "VocalbornCelery",
    "VocalbornTasksError",
    "WorkerRuntime",
    "WorkerStats",
    "__version__",
    "create_celery_app",
    "register_task",
    "task_definition",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(vocalborn_tasks.__all__) == EXPECTED
    assert list(vocalborn_tasks.__all__) == sorted(vocalborn_tasks.__all__)
    for name in vocalborn_tasks.__all__:
        assert hasattr(vocalborn_tasks, name), name


def _library_types_in(annotation: Any) -> Iterator[type]:
    """Every class of this library named anywhere in ``annotation`` (unions, generics...)."""
    if isinstance(annotation, type) and annotation.__module__.startswith("vocalborn_tasks"):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _library_types_in(arg)


def _public_annotations(obj: object) -> Iterator[tuple[str, Any]]:
    """(where, annotation) of every public signature and field ``obj`` offers a host."""
    # Names hidden behind TYPE_CHECKING in the library's modules resolve here.
    from vocalborn_tasks.worker.factory import VocalbornCelery
    from vocalborn_tasks.worker.runtime import WorkerRuntime

    extra = {"VocalbornCelery": VocalbornCelery, "WorkerRuntime": WorkerRuntime}
    if inspect.isclass(obj):
        if issubclass(obj, BaseModel):
            for field, info in obj.model_fields.items():
                yield f"{obj.__name__}.{field}", info.annotation
        for cls in obj.__mro__:
            if not cls.__module__.startswith("vocalborn_tasks"):
                continue  # pydantic's, Exception's... own methods are not ours to export
            for attr, value in vars(cls).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                fn = value.fget if isinstance(value, property) else value
                fn = fn.__func__ if isinstance(fn, classmethod | staticmethod) else fn
                if inspect.isfunction(fn):
                    hints = typing.get_type_hints(fn, localns=extra)
                    for param, annotation in hints.items():
                        yield f"{cls.__name__}.{attr}:{param}", annotation
    elif inspect.isfunction(obj):
        for param, annotation in typing.get_type_hints(obj, localns=extra).items():
            yield f"{obj.__name__}:{param}", annotation


def test_every_type_in_an_exported_signature_is_exported() -> None:
    """Derived, not listed: a host can annotate whatever an exported name hands it."""
    exported = {getattr(vocalborn_tasks, n) for n in vocalborn_tasks.__all__ if n != "__version__"}
    missing: dict[str, list[str]] = {}
    for name in vocalborn_tasks.__all__:
        if name == "__version__":
            continue
        for where, annotation in _public_annotations(getattr(vocalborn_tasks, name)):
            for cls in _library_types_in(annotation):
                if cls not in exported:
                    missing.setdefault(f"{cls.__module__}.{cls.__qualname__}", []).append(where)
    assert not missing, missing


def test_design_contract_names_exist() -> None:
    from vocalborn_tasks import (  # noqa: F401
        AnalysisRequest,
        AnalysisResult,
        Monitor,
        TaskManager,
        TaskSettings,
        TaskState,
        TaskStatus,
    )
    from vocalborn_tasks.analysis import analyze_recording  # noqa: F401


def test_version_comes_from_metadata() -> None:
    from importlib.metadata import version

    assert vocalborn_tasks.__version__ == version("vocalborn-tasks")


def test_importing_starts_and_connects_nothing() -> None:
    # In a fresh interpreter: importing every module opens no socket and starts no thread.
    code = """
import socket, threading
opened = []
real = socket.socket.connect
def spy(self, *a, **k):
    opened.append(a)
    return real(self, *a, **k)
socket.socket.connect = spy
before = threading.active_count()
import vocalborn_tasks, vocalborn_tasks.worker, vocalborn_tasks.cli, vocalborn_tasks.analysis
import vocalborn_tasks.monitor, vocalborn_tasks.manager, vocalborn_tasks.embedded, vocalborn_tasks.tasks
assert not opened, opened
assert threading.active_count() == before, threading.enumerate()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_lazy_celery_app_for_celery_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building the app sets REMAP_SIGTERM (as `celery -A` needs): restored after the test, or
    # a later test in this process sees the environment changed.
    monkeypatch.setenv("REMAP_SIGTERM", "SIGQUIT")
    mod = importlib.import_module("vocalborn_tasks.worker")
    app = mod.app  # built on first access, from the environment
    assert "vocalborn.analyze_audio" in app.tasks
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]


def test_caller_side_imports_no_celery() -> None:
    # The caller side (package, TaskManager, Monitor, results, task definitions, metrics) never
    # imports Celery or kombu: a web process pays for neither, and the layers stay apart.
    code = """
import sys
import vocalborn_tasks
from vocalborn_tasks import TaskManager, Monitor, AnalysisRequest, TaskSettings, task_definition
from vocalborn_tasks.tasks import echo, analyze_audio
import vocalborn_tasks.results, vocalborn_tasks.stats, vocalborn_tasks.record
TaskManager(TaskSettings(redis_url="redis://127.0.0.1:1"))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "billiard"))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_worker_side_names_load_on_first_use() -> None:
    code = """
import sys
import vocalborn_tasks
assert "celery" not in sys.modules
register_task = vocalborn_tasks.register_task
create_celery_app = vocalborn_tasks.create_celery_app
from vocalborn_tasks.worker.runtime import register_task as real
assert register_task is real
assert "celery" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
