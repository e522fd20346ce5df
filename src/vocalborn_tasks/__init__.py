"""vocalborn-tasks: a typed, reliable async task layer for long audio-analysis jobs.

The public names are re-exported here; everything else may change between 0.x releases.
Importing this package connects to nothing, starts nothing and does not import Celery: the
worker-side names (``create_celery_app``, ``register_task``, and the types they use,
``VocalbornCelery`` and ``WorkerRuntime``) are imported on first use.

Every type that appears in an exported name's public signature is exported too (a test derives
them), so a host can annotate its own code without importing private modules.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .alerts import Alert, AlertSink, AlertStatus
from .config import BeatEntry, TaskSettings
from .errors import (
    AudioError,
    BrokerAuthError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    DeliveryLimitError,
    InvalidRequestError,
    InvalidSettingsError,
    ManagerClosedError,
    RecordingAccessError,
    RetryableTaskError,
    TaskError,
    TaskFailedError,
    TaskLostError,
    TaskNotFoundError,
    TaskRevokedError,
    TaskTimeoutError,
    UnknownReferenceError,
    VocalbornTasksError,
)
from .manager import TaskManager
from .models import (
    AnalysisRequest,
    AnalysisResult,
    AnalyzerInfo,
    Finding,
    Segment,
    Submission,
    TaskErrorInfo,
    TaskState,
    TaskStatus,
)
from .monitor import (
    HealthLevel,
    HealthReport,
    Monitor,
    QueueStats,
    RedisTopology,
    ReplicaStats,
    SentinelStats,
    TaskPosition,
    TaskTypeStats,
    WorkerStats,
)
from .recordings import RecordingResolver
from .sinks import ResultSink
from .tasks import TaskContext, TaskDefinition, TaskHandle, task_definition

if TYPE_CHECKING:
    from .worker.factory import VocalbornCelery, create_celery_app
    from .worker.runtime import WorkerRuntime, register_task

try:
    __version__ = version("vocalborn-tasks")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    """The worker-side public names, imported on first use (they need Celery)."""
    if name in ("create_celery_app", "VocalbornCelery"):
        from .worker import factory

        return getattr(factory, name)
    if name in ("register_task", "WorkerRuntime"):
        from .worker import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
