"""The library's exceptions: one root, then what a caller can act on.

Every error carries ``retryable``: ``True`` when the same call may succeed later
(the broker was down, a file server hiccuped), ``False`` when repeating it cannot
help (bad audio, an invalid request). Tasks retry only the first kind.

A retry loop catches :class:`BrokerUnavailableError` only: an authentication failure is its
sibling, not its subclass, so it is never retried. Catch :class:`BrokerError` for both.

::

    VocalbornTasksError                 root; never raised itself
    ├── ConfigurationError              settings that cannot work (permanent)
    │   └── InvalidSettingsError        TaskSettings refused a value (one line, names the variable)
    ├── ManagerClosedError              a TaskManager/Monitor used after aclose()
    ├── InvalidRequestError             a request refused before anything was queued (permanent)
    │   ├── RecordingAccessError        a recording outside the allowed roots/schemes, or missing
    │   └── UnknownReferenceError       no reference recording has the id the request named
    ├── BrokerError                     Redis/Valkey cannot be used; never raised itself
    │   ├── BrokerUnavailableError      unreachable or not answering in time (retryable)
    │   └── BrokerAuthError             wrong password / ACL user / certificate (permanent)
    ├── AudioError                      bad audio, with a stable ``code`` (permanent)
    ├── RetryableTaskError              a task body's transient failure (retryable)
    ├── DeliveryLimitError              a message that killed its worker too often (permanent)
    └── TaskError                       about one task; carries ``task_id``
        ├── TaskFailedError             the task ended in FAILURE (remote type, message, code)
        ├── TaskRevokedError            the task was cancelled
        ├── TaskTimeoutError            waiting for it took longer than the caller allowed
        └── TaskNotFoundError           no such task: never submitted, or its result expired
            └── TaskLostError           submitted, then lost (e.g. a non-persistent server restart)

Every error has a stable ``code`` (never ``None``), and every code has one row in
:data:`ERROR_CODES`: its *cause* (``"input"``: the request or the patient's recording was the
problem, resubmitting it unchanged cannot help; ``"system"``: the back end was, a retry or an
operator can help) and a *public message* that is safe to show to an end user. An error's
``message`` (``str(exc)``) is the detail for logs: it may name server paths and file names;
``public_message`` never does. The same table is in ``docs/errors.md``.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal, NamedTuple

__all__ = [
    "ERROR_CODES",
    "AudioError",
    "BrokerAuthError",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeliveryLimitError",
    "InvalidRequestError",
    "InvalidSettingsError",
    "ManagerClosedError",
    "RecordingAccessError",
    "RetryableTaskError",
    "TaskError",
    "TaskFailedError",
    "TaskLostError",
    "TaskNotFoundError",
    "TaskRevokedError",
    "TaskTimeoutError",
    "UnknownReferenceError",
    "VocalbornTasksError",
    "error_cause",
    "is_retryable",
    "public_message_for",
]

#: Whose fault an error is: the request/recording ("input") or the back end ("system").
ErrorCause = Literal["input", "system"]


class ErrorCode(NamedTuple):
    """One row of :data:`ERROR_CODES`."""

    cause: ErrorCause
    public_message: str


#: Every code the library sets, with its cause and a message safe to show an end user.
ERROR_CODES: Final[dict[str, ErrorCode]] = {
    # --- refused at submit time (InvalidRequestError): nothing was queued ---
    "invalid_request": ErrorCode("input", "the request is invalid"),
    "recording_access": ErrorCode("input", "a recording was not found or is not allowed"),
    "unreadable_audio": ErrorCode("input", "a recording is not a readable audio file"),
    "empty_audio": ErrorCode("input", "a recording holds no audio"),
    "unknown_reference": ErrorCode("input", "no reference recording has this id"),
    "reference_upload_not_allowed": ErrorCode(
        "input", "the reference recording is chosen by the service: send reference_id"
    ),
    # --- found by the analysis on the worker (AudioError): the task ends in FAILURE ---
    "audio": ErrorCode("input", "the recording cannot be analysed"),
    "unreadable": ErrorCode("input", "the recording could not be decoded as audio"),
    "unsupported_format": ErrorCode("input", "the recording's audio format is not supported"),
    "empty": ErrorCode("input", "the recording is empty"),
    "too_short": ErrorCode("input", "the recording is too short"),
    "too_long": ErrorCode("input", "the recording is much longer than the reference"),
    "no_speech": ErrorCode("input", "no speech was found in the recording"),
    "reference_unusable": ErrorCode("input", "the reference recording cannot be used"),
    # --- the back end: a retry later, or an operator, can help ---
    "broker_unavailable": ErrorCode("system", "the service is temporarily unavailable"),
    "broker_auth": ErrorCode("system", "the service is misconfigured"),
    "configuration": ErrorCode("system", "the service is misconfigured"),
    "closed": ErrorCode("system", "the service is shutting down"),
    "time_limit": ErrorCode("system", "the analysis took too long"),
    "worker_lost": ErrorCode("system", "the worker running the task stopped unexpectedly"),
    "delivery_limit": ErrorCode("system", "the task kept stopping its workers and was given up"),
    "unknown_task": ErrorCode("system", "no worker knows this kind of task"),
    "retryable": ErrorCode("system", "a temporary failure persisted after retries"),
    "bad_result": ErrorCode("system", "the task returned an unexpected result"),
    "internal": ErrorCode("system", "an internal error occurred"),
    # --- about a task rather than its outcome (TaskError subclasses) ---
    "task_failed": ErrorCode("system", "the task failed"),
    "revoked": ErrorCode("system", "the task was cancelled"),
    "purged": ErrorCode("system", "the task was removed from its queue before it ran"),
    "timeout": ErrorCode("system", "the task has not finished yet"),
    "not_found": ErrorCode("system", "no such task"),
    "expired": ErrorCode("system", "the task's result has expired"),
    "lost": ErrorCode("system", "the task was lost by the server; submit it again"),
    # --- the web integration's answers that are about the HTTP request, not a task ---
    "no_route": ErrorCode("input", "no such resource"),
    "method_not_allowed": ErrorCode("input", "this method is not allowed here"),
    "http_error": ErrorCode("input", "the request was refused"),
    "not_ready": ErrorCode("system", "no worker is serving analyses right now"),
    # --- generic codes of the base classes (subclasses refine them) ---
    "error": ErrorCode("system", "an error occurred"),
    "broker": ErrorCode("system", "the service is unavailable"),
    "task": ErrorCode("system", "an error occurred with this task"),
}

#: Remote exception types that mean "the request or its recording" whatever their code.
_INPUT_TYPES: Final = frozenset({"AudioError", "InvalidRequestError", "RecordingAccessError"})


def error_cause(code: str, remote_type: str | None = None) -> ErrorCause:
    """Whose fault an error with ``code`` (raised as ``remote_type``) is.

    An :class:`AudioError` or :class:`InvalidRequestError` is always ``"input"``; otherwise
    the code's row decides, and an unknown code (a host's own) is ``"system"``.
    """
    if remote_type in _INPUT_TYPES:
        return "input"
    row = ERROR_CODES.get(code)
    return row.cause if row is not None else "system"


def public_message_for(code: str, remote_type: str | None = None) -> str:
    """The end-user message of ``code``: fixed text, never a path or a file name."""
    row = ERROR_CODES.get(code)
    if row is not None:
        return row.public_message
    if error_cause(code, remote_type) == "input":
        return ERROR_CODES["audio"].public_message
    return ERROR_CODES["internal"].public_message


class VocalbornTasksError(Exception):
    """Root of every error this library raises on purpose."""

    retryable: ClassVar[bool] = False
    #: A stable, machine-readable code; subclasses and instances refine it.
    code: str = "error"

    def __init__(self, message: str, code: str | None = None, *, public: str | None = None) -> None:
        # Both go into ``args`` so Celery's JSON exception format carries the code to the
        # caller, and ``type(exc)(*exc.args)`` rebuilds an equal error.
        super().__init__(message, code if code is not None else type(self).code)
        self.message = message
        if code is not None:
            self.code = code
        self._public = public

    def __str__(self) -> str:
        return self.message

    @property
    def cause(self) -> ErrorCause:
        """``"input"`` (the request or recording) or ``"system"`` (the back end)."""
        return error_cause(self.code, type(self).__name__)

    @property
    def public_message(self) -> str:
        """A message safe to show an end user: no server paths, no file names.

        ``message`` keeps the detail for logs.
        """
        return self._public if self._public is not None else public_message_for(self.code)


class ConfigurationError(VocalbornTasksError):
    """Settings that cannot give a safe, working system (e.g. visibility timeout too short)."""

    code = "configuration"


class InvalidSettingsError(ConfigurationError, ValueError):
    """:class:`~vocalborn_tasks.config.TaskSettings` refused a value or a combination.

    The message is one line naming the environment variable (never its value: it may be a
    password), so a web server or a worker that fails at start-up says why in one line. A
    ``ValueError`` too, like pydantic's own validation errors it replaces.

    Attributes:
        errors: one ``{"loc": NAME, "msg": ...}`` per problem (never the rejected value).
    """

    def __init__(self, message: str, *, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors: list[dict[str, object]] = list(errors or [])


class ManagerClosedError(VocalbornTasksError):
    """A TaskManager or Monitor was used after ``aclose()`` (or outside ``async with``)."""

    code = "closed"


class InvalidRequestError(VocalbornTasksError):
    """A request was refused at the edge; nothing was queued.

    The one type a host catches for "the request is bad", whether it came from building an
    :class:`~vocalborn_tasks.models.AnalysisRequest`, from the keyword form of
    ``submit_audio_analysis`` or from the file checks at submit time.

    Attributes:
        errors: for a request that failed validation, one ``{"loc": [...], "msg": ...}``
            per problem (never the rejected value itself); empty otherwise.
    """

    code = "invalid_request"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        public: str | None = None,
        errors: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message, code, public=public)
        self.errors: list[dict[str, object]] = list(errors or [])


class RecordingAccessError(InvalidRequestError):
    """A recording is missing, outside the configured roots, or uses an unsupported scheme."""

    code = "recording_access"


class UnknownReferenceError(InvalidRequestError):
    """No reference recording has the id a request named (``reference_id``).

    Raised by the web integration's default reference lookup, and the error a host's own
    ``references`` callable raises for an id it does not know (HTTP 422 ``unknown_reference``).
    """

    code = "unknown_reference"


class BrokerError(VocalbornTasksError):
    """The Redis/Valkey server cannot be used: unreachable, or it refused us.

    Catch it to handle both kinds at once (a CLI that reports either in one line); a retry
    loop catches :class:`BrokerUnavailableError` alone.
    """

    code = "broker"


class BrokerUnavailableError(BrokerError):
    """The Redis/Valkey server could not be reached in time. Safe to retry later."""

    retryable = True
    code = "broker_unavailable"


class BrokerAuthError(BrokerError):
    """The server refused our credentials or certificate; retrying will not help.

    Not a :class:`BrokerUnavailableError` (it was until 0.x, see the changelog): waiting does
    not fix a wrong password, so no retry loop should see it.
    """

    retryable = False
    code = "broker_auth"


class AudioError(VocalbornTasksError):
    """A recording that cannot be analysed.

    ``code`` is one of a stable set (``unreadable``, ``empty``, ``too_short``, ``no_speech``,
    ``too_long``, ...) so a host can map it to its own message.
    """

    code = "audio"

    def __init__(self, message: str, code: str = "audio", *, public: str | None = None) -> None:
        super().__init__(message, code, public=public)


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

    def __init__(
        self, message: str, *, task_id: str, code: str | None = None, public: str | None = None
    ) -> None:
        super().__init__(message, code, public=public)
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The task ended in FAILURE.

    Branch on ``cause`` and ``code``, never on ``remote_type``::

        except TaskFailedError as exc:
            if exc.cause == "input":      # the patient's recording: ask for a new one
                show(exc.public_message)  # e.g. code "too_short", "no_speech"
            else:                         # "system": the back end; retry later or alert
                ...

    Attributes:
        remote_type: the exception class name raised in the worker.
        remote_message: its message, as the worker stored it (for logs: may name paths).
        code: always set: the worker's code (``no_speech``, ``delivery_limit``...), or
            ``internal`` for an exception that carried none (see :data:`ERROR_CODES`).
        cause: ``"input"`` or ``"system"``.
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
        public: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, code=code or "internal", public=public)
        self.remote_type = remote_type
        self.remote_message = remote_message

    @property
    def cause(self) -> ErrorCause:
        return error_cause(self.code, self.remote_type)

    @property
    def public_message(self) -> str:
        if self._public is not None:
            return self._public
        return public_message_for(self.code, self.remote_type)


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
