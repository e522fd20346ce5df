from __future__ import annotations

import importlib
import subprocess
import sys

import vocalborn_tasks

EXPECTED = {
    "Alert",
    "AlertSink",
    "AnalysisRequest",
    "AnalysisResult",
    "AnalyzerInfo",
    "AudioError",
    "BrokerAuthError",
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
    "ResultSink",
    "RetryableTaskError",
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
    "VocalbornTasksError",
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


def test_lazy_celery_app_for_celery_cli() -> None:
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
