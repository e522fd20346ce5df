"""The library's exceptions: one root, then what a caller can act on.

Every error carries ``retryable``: ``True`` when the same call may succeed later
(the broker was down, a file server hiccuped), ``False`` when repeating it cannot
help (bad audio, an invalid request). Tasks retry only the first kind.

::

    VocalbornTasksError                 root; never raised itself
    ├── ConfigurationError              settings that cannot work (permanent)
    ├── ManagerClosedError              a TaskManager/Monitor used after aclose()
    ├── InvalidRequestError             a request refused before anything was queued (permanent)
    │   └── RecordingAccessError        a recording outside the allowed roots/schemes, or missing
    ├── BrokerUnavailableError          Redis/Valkey unreachable or refused us (retryable)
    │   └── BrokerAuthError             wrong password / ACL user (permanent)
    ├── AudioError                      bad audio, with a stable ``code`` (permanent)
    ├── RetryableTaskError              a task body's transient failure (retryable)
    ├── DeliveryLimitError              a message that killed its worker too often (permanent)
    └── TaskError                       about one task; carries ``task_id``
        ├── TaskFailedError             the task ended in FAILURE (remote type, message, code)
        ├── TaskRevokedError            the task was cancelled
        ├── TaskTimeoutError            waiting for it took longer than the caller allowed
        └── TaskNotFoundError           no such task: never submitted, or its result expired
            └── TaskLostError           submitted, then lost (e.g. a non-persistent server restart)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AudioError",
    "BrokerAuthError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeliveryLimitError",
    "InvalidRequestError",
    "ManagerClosedError",
    "RecordingAccessError",
    "RetryableTaskError",
    "TaskError",
    "TaskFailedError",
    "TaskLostError",
    "TaskNotFoundError",
    "TaskRevokedError",
    "TaskTimeoutError",
    "VocalbornTasksError",
    "is_retryable",
]


class VocalbornTasksError(Exception):
    """Root of every error this library raises on purpose."""

    retryable: ClassVar[bool] = False
    #: A stable, machine-readable code; subclasses and instances refine it.
    code: str = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        # Both go into ``args`` so Celery's JSON exception format carries the code to the
        # caller, and ``type(exc)(*exc.args)`` rebuilds an equal error.
        super().__init__(message, code if code is not None else type(self).code)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigurationError(VocalbornTasksError):
    """Settings that cannot give a safe, working system (e.g. visibility timeout too short)."""

    code = "configuration"


class ManagerClosedError(VocalbornTasksError):
    """A TaskManager or Monitor was used after ``aclose()`` (or outside ``async with``)."""

    code = "closed"


class InvalidRequestError(VocalbornTasksError):
    """A request was refused at the edge; nothing was queued."""

    code = "invalid_request"


class RecordingAccessError(InvalidRequestError):
    """A recording is missing, outside the configured roots, or uses an unsupported scheme."""

    code = "recording_access"


class BrokerUnavailableError(VocalbornTasksError):
    """The Redis/Valkey server could not be reached in time. Safe to retry later."""

    retryable = True
    code = "broker_unavailable"


class BrokerAuthError(BrokerUnavailableError):
    """The server refused our credentials or certificate; retrying will not help."""

    retryable = False
    code = "broker_auth"


class AudioError(VocalbornTasksError):
    """A recording that cannot be analysed.

    ``code`` is one of a stable set (``unreadable``, ``empty``, ``too_short``, ``no_speech``,
    ``too_long``, ...) so a host can map it to its own message.
    """

    code = "audio"

    def __init__(self, message: str, code: str = "audio") -> None:
        super().__init__(message, code)


class RetryableTaskError(VocalbornTasksError):
    """Raised inside a task body for a transient failure (I/O, a storage hiccup)."""

    retryable = True
    code = "retryable"


class DeliveryLimitError(VocalbornTasksError):
    """A task was delivered ``max_deliveries`` times without finishing: it keeps killing workers."""

    code = "delivery_limit"


#: Errors of the OS that say "this will not get better by waiting".
_PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_retryable(exc: BaseException) -> bool:
    """Classify an exception raised in a task body.

    Our own errors say so themselves; I/O and connection trouble is retryable except for
    missing or forbidden files; anything else (bugs, bad data) is permanent, because
    retrying a deterministic failure only delays the FAILURE and burns worker time.
    """
    if isinstance(exc, VocalbornTasksError):
        return exc.retryable
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    # The Redis client's own connection errors are not OSError subclasses.
    from redis.exceptions import BusyLoadingError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | BusyLoadingError)


class TaskError(VocalbornTasksError):
    """Something about one task; ``task_id`` says which."""

    code = "task"

    def __init__(self, message: str, *, task_id: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The task ended in FAILURE.

    Attributes:
        remote_type: the exception class name raised in the worker.
        remote_message: its message, as the worker stored it.
        code: a stable code when the worker knew one (e.g. ``no_speech``, ``delivery_limit``).
    """

    code = "task_failed"

    def __init__(
        self,
        message: str,
        *,
        task_id: str,
        remote_type: str,
        remote_message: str,
        code: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, code=code)
        self.remote_type = remote_type
        self.remote_message = remote_message


class TaskRevokedError(TaskError):
    """The task was cancelled before it finished."""

    code = "revoked"


class TaskTimeoutError(TaskError, TimeoutError):
    """The caller's wait ran out; the task itself may still finish later."""

    retryable = True
    code = "timeout"


class TaskNotFoundError(TaskError):
    """No such task: the id was never submitted here, or its result has expired."""

    code = "not_found"


class TaskLostError(TaskNotFoundError):
    """The task was submitted but the server no longer knows it (restart without persistence)."""

    code = "lost"
