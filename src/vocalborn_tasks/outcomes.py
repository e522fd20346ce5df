"""The caller side's rules that do not depend on Redis: requests in, outcomes out.

Shared by :class:`~vocalborn_tasks.TaskManager` and the in-memory
:class:`~vocalborn_tasks.testing.FakeTaskManager`, so the two cannot drift apart on what a
request may look like, which files it may name, how an owner is scoped, or which error a final
state raises (a copy in the fake had already missed the ``purged`` code).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from .errors import (
    InvalidRequestError,
    TaskFailedError,
    TaskLostError,
    TaskNotFoundError,
    TaskRevokedError,
)
from .models import AnalysisRequest, AnalysisResult, TaskState, TaskStatus, invalid_request_from
from .record import owner_tag
from .recordings import RecordingResolver, check_recording_location, local_path, probe_audio_header
from .tasks.builtin import analyze_audio
from .tasks.definition import TaskHandle

if TYPE_CHECKING:
    from .config import TaskSettings

__all__ = ["build_request", "prepare_requests", "result_of", "scope_owner"]


def build_request(request: AnalysisRequest | None, fields: Mapping[str, Any]) -> AnalysisRequest:
    """The request from either call form (a model, or the seed's keywords), never both.

    Raises:
        InvalidRequestError: both forms given, or the keywords do not make a valid request.
    """
    given = {k: v for k, v in fields.items() if v is not None}
    if request is not None:
        if given:
            raise InvalidRequestError("pass either an AnalysisRequest or keyword fields, not both")
        return request
    try:
        return AnalysisRequest.model_validate(given)
    except ValidationError as exc:  # the other models raise pydantic's own
        raise invalid_request_from(exc) from None


async def prepare_requests(
    requests: Iterable[AnalysisRequest],
    resolver: Callable[[], RecordingResolver],
    settings: TaskSettings,
    *,
    executor: Executor | None = None,
) -> list[AnalysisRequest]:
    """Fill in recordings from the resolver, then confine and probe every local file.

    ``resolver`` is only called (and the host's resolver loaded) for a request that names no
    files. Path resolution and header probes touch the filesystem: one thread hop for the
    batch, to ``executor`` when given (the asyncio loop's, cheaper than anyio's: the
    :class:`~vocalborn_tasks.TaskManager` passes its own), else anyio's worker threads.
    A request is copied only where a location changes.

    Raises:
        InvalidRequestError: a location is outside the roots, missing or not audio.
    """
    located = []
    for request in requests:
        if request.recording is None or request.reference is None:
            found = await resolver().locate(
                request.practice_record_id, dict(request.analysis_params)
            )
            request = request.model_copy(
                update={
                    "recording": request.recording or found[0],
                    "reference": request.reference or found[1],
                }
            )
        located.append(request)
    if not located:
        return []
    if executor is not None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, _check_files, located, settings)
    return await anyio.to_thread.run_sync(_check_files, located, settings)


def _check_files(requests: list[AnalysisRequest], settings: TaskSettings) -> list[AnalysisRequest]:
    checked = []
    for req in requests:
        changed = {}
        for what, location in (("recording", req.recording), ("reference", req.reference)):
            assert location is not None
            normalised = check_recording_location(location, settings, what=what)
            if local_path(normalised) is not None:
                probe_audio_header(normalised, what=what)
            if normalised != location:
                changed[what] = normalised
        checked.append(req.model_copy(update=changed) if changed else req)
    return checked


def scope_owner(owner: str | None) -> str | None:
    """The digest the record keeps for ``owner`` (None: unscoped).

    Raises:
        InvalidRequestError: an empty owner (a host's bug that would scope nobody).
    """
    if owner is None:
        return None
    if not isinstance(owner, str) or not owner:
        raise InvalidRequestError("owner must be a non-empty string (or None: unscoped)")
    return owner_tag(owner)


def result_of(task: str | TaskHandle[Any], status: TaskStatus) -> Any:
    """Turn a final status into the typed result, or raise the error that matches it.

    A plain id string means an analysis (:class:`AnalysisResult`); a :class:`TaskHandle`
    decodes its definition's declared type.
    """
    task_id = status.task_id
    if status.state is TaskState.SUCCESS:
        try:
            if isinstance(task, TaskHandle):
                return task.definition.decode_result(status.result)
            return AnalysisResult.model_validate(status.result)
        except ValidationError as exc:
            hint = ""
            if not isinstance(task, TaskHandle) and status.task_name not in (
                None,
                analyze_audio.name,
            ):
                hint = (
                    f" (it is a {status.task_name} task: a plain id means an analysis; pass "
                    "TaskHandle.from_id(definition, task_id))"
                )
            raise TaskFailedError(
                f"task {task_id} returned a result of the wrong shape{hint}: "
                + _validation_message(exc),
                task_id=task_id,
                remote_type="ValidationError",
                remote_message=str(exc.error_count()),
                code="bad_result",
            ) from None
    if status.state is TaskState.REVOKED:
        purged = status.error is not None and status.error.code == "purged"
        raise TaskRevokedError(
            f"task {task_id} was " + ("purged from its queue" if purged else "cancelled"),
            task_id=task_id,
            code="purged" if purged else None,
        )
    if status.state is TaskState.LOST:
        raise TaskLostError(f"task {task_id} was lost by the server", task_id=task_id)
    if status.state in (TaskState.NOT_FOUND, TaskState.EXPIRED):
        raise TaskNotFoundError(
            f"task {task_id} is unknown or its result has expired",
            task_id=task_id,
            code="expired" if status.state is TaskState.EXPIRED else None,
        )
    error = status.error
    raise TaskFailedError(
        f"task {task_id} failed: "
        + (f"{error.type}: {error.message}" if error else "unknown error"),
        task_id=task_id,
        remote_type=error.type if error else "Error",
        remote_message=error.message if error else "",
        code=error.code if error else None,
    )


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
