"""Typed data that crosses the library's edges: requests, results, task states.

Everything here is a pydantic model or enum so that what leaves a host app is validated
before it is queued, and what comes back from a worker is validated before a host reads it.
Models travel as JSON (``model_dump(mode="json")``), never pickle.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ErrorCause, InvalidRequestError, error_cause, public_message_for
from .record.meta import FINAL_STATES as _STORED_FINAL_STATES

__all__ = [
    "FINAL_STATES",
    "AnalysisRequest",
    "AnalysisResult",
    "AnalyzerInfo",
    "Finding",
    "Segment",
    "Submission",
    "TaskErrorInfo",
    "TaskState",
    "TaskStatus",
    "invalid_request_from",
    "parse_cursor",
    "state_from_celery",
]

#: Largest JSON size of ``analysis_params``/``metadata`` a request may carry. Task arguments
#: live in Redis and pass through every worker: a megabyte of metadata is a mistake or an attack.
MAX_PARAMS_BYTES = 16 * 1024

RecordId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
]


class TaskState(StrEnum):
    """Where a task is. Celery's own states plus the ones Celery cannot tell apart."""

    PENDING = "PENDING"  # queued (the library saw it submitted), not yet picked up
    STARTED = "STARTED"  # a worker has begun running it
    PROGRESS = "PROGRESS"  # running, and has published a step and percent
    RETRY = "RETRY"  # failed transiently, scheduled to run again
    SUCCESS = "SUCCESS"  # finished; ``result`` holds its value
    FAILURE = "FAILURE"  # finished with an error; ``error`` says which
    REVOKED = "REVOKED"  # cancelled
    NOT_FOUND = "NOT_FOUND"  # unknown id: never submitted, or all trace of it has expired
    EXPIRED = "EXPIRED"  # it finished, but its result has expired
    LOST = "LOST"  # submitted, then forgotten by the server (restart without persistence)

    @property
    def is_final(self) -> bool:
        """True for states a task never leaves."""
        return self in FINAL_STATES


#: States a task never leaves: the record's final states (one rule, ``record.FINAL_STATES``)
#: and the ones a reader concludes when the record is gone.
FINAL_STATES: frozenset[TaskState] = frozenset(
    {TaskState(state) for state in _STORED_FINAL_STATES}
    | {TaskState.NOT_FOUND, TaskState.EXPIRED, TaskState.LOST}
)

_CELERY_STATES: dict[str, TaskState] = {
    "PENDING": TaskState.PENDING,
    "RECEIVED": TaskState.PENDING,
    "STARTED": TaskState.STARTED,
    "PROGRESS": TaskState.PROGRESS,
    "RETRY": TaskState.RETRY,
    "SUCCESS": TaskState.SUCCESS,
    "FAILURE": TaskState.FAILURE,
    "REVOKED": TaskState.REVOKED,
    "REJECTED": TaskState.FAILURE,
    "IGNORED": TaskState.FAILURE,
}


def state_from_celery(state: str) -> TaskState:
    """Map one of Celery's state strings to a :class:`TaskState`.

    Unknown custom states are treated as in-progress work (``PROGRESS``): a task that
    publishes its own state is still running.
    """
    return _CELERY_STATES.get(state.upper(), TaskState.PROGRESS)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_json_size(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > MAX_PARAMS_BYTES:
        raise ValueError(f"is {size} bytes of JSON; at most {MAX_PARAMS_BYTES} are allowed")
    return value


class AnalysisRequest(_Model):
    """One practice recording to compare with its reference.

    ``recording`` and ``reference`` are local paths or URIs that the worker can read
    (``file://`` by default; a host adds schemes with a recording resolver). When both are
    omitted, the configured resolver maps ``practice_record_id`` to them.
    """

    practice_record_id: RecordId
    recording: str | None = Field(default=None, min_length=1, max_length=4096)
    reference: str | None = Field(default=None, min_length=1, max_length=4096)
    language: str | None = Field(
        default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"
    )
    analysis_params: dict[str, JsonValue] = Field(default_factory=dict)
    #: The sentence the reference speaks (words; Chinese characters or tone-numbered pinyin):
    #: labels the result's segments. Optional: without it the segments are unlabelled.
    reference_text: str | None = Field(default=None, min_length=1, max_length=2000)

    @model_validator(mode="wrap")
    @classmethod
    def _one_error_type(
        cls, data: Any, handler: ModelWrapValidatorHandler[AnalysisRequest]
    ) -> AnalysisRequest:
        # A host catches one type for "the request is bad": InvalidRequestError, whether the
        # request was built here or by the keyword form of submit_audio_analysis. (pydantic
        # lets exceptions other than ValueError/AssertionError out of a validator unchanged.)
        try:
            return handler(data)
        except ValidationError as exc:
            raise invalid_request_from(exc) from None

    @field_validator("analysis_params")
    @classmethod
    def _params_size(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return _check_json_size(value)

    @field_validator("recording", "reference")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class AnalyzerInfo(_Model):
    """Which analyzer produced a result, so results from different models are never mixed up."""

    name: str
    version: str


class Finding(_Model):
    """One concrete observation behind the advice, with its time span when it has one.

    ``code`` is stable (``missing_end``, ``extra_pauses``, ``slow``, ``pitch_contour``,
    ``noise``, ...) so a host can word it its own way; ``message`` is already localised.
    """

    code: str
    message: str
    start_s: float | None = None
    end_s: float | None = None
    severity: float = Field(default=0.5, ge=0.0, le=1.0)


Score = Annotated[float, Field(ge=0.0, le=100.0)]


class Segment(_Model):
    """One unit of the reference sentence (a syllable, or a word when the text is known).

    ``index`` is the 1-based position in the sentence. ``start_s``/``end_s`` are the span in
    the practice recording aligned to it (``None`` when nothing was), ``reference_start_s``/
    ``reference_end_s`` the span in the reference. ``label`` is the word or syllable when the
    host gave ``reference_text`` and its unit count matched. ``tone_score`` is set for tonal
    languages only. ``finding`` is the finding code when this unit is judged wrong.
    """

    index: int = Field(ge=1)
    kind: str
    label: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    reference_start_s: float
    reference_end_s: float
    pronunciation_score: float | None = Field(default=None, ge=0.0, le=100.0)
    tone_score: float | None = Field(default=None, ge=0.0, le=100.0)
    finding: str | None = None


class AnalysisResult(_Model):
    """The scores, level and advice for one practice recording.

    ``level`` runs from 1 (best) to 5 (worst), as on the platform. ``reliable`` is false when
    the recording itself is too poor to judge (noise, clipping); the app should ask for a new one.
    """

    practice_record_id: str | None = None
    overall_score: Score
    level: int = Field(ge=1, le=5)
    pronunciation_accuracy: Score
    fluency_score: Score
    rhythm_score: Score
    tone_score: Score
    clarity_score: Score
    completeness_score: Score
    reliable: bool
    reliability_issues: list[str] = Field(default_factory=list)
    improvement_areas: list[str] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    language: str | None = None
    #: The language the messages are written in (``en`` or ``zh-TW``), which may differ from
    #: ``language`` when that one has no advice of its own (``metrics.language_supported``).
    advice_language: str | None = None
    #: The reference cut into units, each aligned and scored (see :class:`Segment`).
    segments: list[Segment] = Field(default_factory=list)
    metrics: dict[str, JsonValue] = Field(default_factory=dict)
    analyzer: AnalyzerInfo
    processing_time_s: float = Field(ge=0.0)


class TaskErrorInfo(_Model):
    """Why a task failed, as stored by the worker: never a traceback with secrets in it.

    ``code`` is always set (``internal`` for an exception that carried none) and ``cause``
    says whose fault it was (see :data:`vocalborn_tasks.errors.ERROR_CODES`). ``message`` is
    the worker's detail, for logs (it may name server paths); show ``public_message``.
    """

    type: str
    message: str
    code: str = "internal"
    cause: ErrorCause = "system"
    public_message: str = ""
    retryable: bool = False

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("code") is None:
                data["code"] = "internal"
            code, kind = str(data["code"]), data.get("type")
            remote = kind if isinstance(kind, str) else None
            data.setdefault("cause", error_cause(code, remote))
            if not data.get("public_message"):
                data["public_message"] = public_message_for(code, remote)
        return data


class TaskStatus(_Model):
    """A snapshot of one task.

    ``result`` is the task's JSON return value on SUCCESS (use
    :meth:`TaskManager.wait_for_result` for a typed model); ``error`` is set on FAILURE.
    """

    task_id: str
    state: TaskState
    task_name: str | None = None
    step: str | None = None
    progress: float | None = Field(default=None, ge=0.0, le=100.0)
    result: Any = None
    error: TaskErrorInfo | None = None
    retries: int = 0
    submitted_at: datetime | None = None
    date_done: datetime | None = None
    queue: str | None = None

    @property
    def is_final(self) -> bool:
        """True when the task will not change state again."""
        return self.state.is_final

    @property
    def cursor(self) -> str:
        """Where this status lies in the task's life, for resuming a stream after it.

        Ordered by attempt, then state (queued < started < progress < retry < final), then
        progress; ``TaskManager.watch(task, after=cursor)`` yields only what comes later.
        The SSE route of :mod:`vocalborn_tasks.fastapi` sends it as each event's ``id``.
        """
        rank = 4 if self.is_final else _CURSOR_RANK.get(self.state, 0)
        return f"{self.retries}.{rank}.{round((self.progress or 0.0) * 100)}"


_CURSOR_RANK: dict[TaskState, int] = {
    TaskState.PENDING: 0,
    TaskState.STARTED: 1,
    TaskState.PROGRESS: 2,
    TaskState.RETRY: 3,
}


def parse_cursor(cursor: str | None) -> tuple[int, int, int] | None:
    """The sort key of a :attr:`TaskStatus.cursor`; None for a missing or malformed one."""
    if not cursor:
        return None
    parts = cursor.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 9 for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def invalid_request_from(exc: ValidationError) -> InvalidRequestError:
    """An :class:`InvalidRequestError` for a failed validation (messages, never the values)."""
    errors: list[dict[str, object]] = []
    parts: list[str] = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        errors.append({"loc": loc, "msg": e["msg"]})
        if len(parts) < 5:
            parts.append(f"{'.'.join(loc) or 'request'}: {e['msg']}")
    more = exc.error_count() - len(parts)
    message = "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return InvalidRequestError(message, public=message, errors=errors)


class Submission(NamedTuple):
    """What :meth:`~vocalborn_tasks.TaskManager.submit_analyses` returns per request."""

    #: The task analysing the request (an existing one when ``duplicate``).
    task_id: str
    #: True when the practice record already had an analysis in flight (for the same owner):
    #: nothing new was queued and ``task_id`` is that analysis's. The caller's files were not
    #: used (a web service deletes an upload that was only a duplicate).
    duplicate: bool
