"""vocalborn-tasks: a typed, reliable async task layer for long audio-analysis jobs.

The public names are re-exported here; everything else may change between 0.x releases.
Importing this package connects to nothing, starts nothing and does not import Celery: the two
worker-side names (``create_celery_app``, ``register_task``) are imported on first use.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .alerts import Alert, AlertSink
from .config import TaskSettings
from .errors import (
    AudioError,
    BrokerAuthError,
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
    VocalbornTasksError,
)
from .manager import TaskManager
from .models import (
    AnalysisRequest,
    AnalysisResult,
    AnalyzerInfo,
    Finding,
    TaskErrorInfo,
    TaskState,
    TaskStatus,
)
from .monitor import (
    HealthLevel,
    HealthReport,
    Monitor,
    QueueStats,
    TaskPosition,
    TaskTypeStats,
    WorkerStats,
)
from .recordings import RecordingResolver
from .sinks import ResultSink
from .tasks import TaskContext, TaskDefinition, TaskHandle, task_definition

if TYPE_CHECKING:
    from .worker.factory import create_celery_app
    from .worker.runtime import register_task

try:
    __version__ = version("vocalborn-tasks")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    """The worker-side public names, imported on first use (they need Celery)."""
    if name == "create_celery_app":
        from .worker.factory import create_celery_app

        return create_celery_app
    if name == "register_task":
        from .worker.runtime import register_task

        return register_task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
