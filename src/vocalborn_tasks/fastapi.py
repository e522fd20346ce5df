"""FastAPI integration: one manager per app, errors as problem+json, an analysis router.

Install with ``pip install 'vocalborn-tasks[fastapi]'``. A whole service::

    from fastapi import FastAPI
    from vocalborn_tasks import TaskSettings
    from vocalborn_tasks.fastapi import analysis_router, install_error_handlers, manager_lifespan

    settings = TaskSettings()  # RECORDING_ROOTS and UPLOAD_DIR (inside one of the roots)
    app = FastAPI(lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(analysis_router(settings), prefix="/analyses")

Routes of :func:`analysis_router` (relative to its prefix):

========================== ==================================================================
``POST /``                 multipart upload (``recording``, ``reference`` files,
                           ``practice_record_id``, ``language``): streamed to ``UPLOAD_DIR``
                           with a size cap and an atomic rename; 202 with the task id and a
                           ``Location`` header
``GET /{id}``              the task's status (public error messages only)
``GET /{id}/result``       long poll: 200 with the result, or 202 + ``Retry-After`` while it
                           runs (``?wait=`` seconds, at most 60)
``POST /{id}/cancel``      cancel; returns the status
``GET /{id}/events``       server-sent events: one per status, ``id`` = the status cursor,
                           keep-alive comments, ``Last-Event-ID`` resumes after that status
                           (204 when it was the final one: EventSource stops reconnecting)
========================== ==================================================================

Errors are ``application/problem+json`` (RFC 9457) with ``code`` and ``cause`` added: 422 a bad
request or recording, 404 unknown task, 410 lost, 409 cancelled, 413 upload too large, 503
broker unavailable (with ``Retry-After``), 504 a wait that ran out, 500 anything else. The
``detail`` is the error's public message: never a server path.

Uploads are deleted by the maintenance task (``beat``) once older than ``UPLOAD_RETENTION``.
This module imports FastAPI and Starlette, never Celery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from .config import TaskSettings
from .errors import (
    AudioError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    ErrorCause,
    InvalidRequestError,
    TaskFailedError,
    TaskLostError,
    TaskNotFoundError,
    TaskRevokedError,
    TaskTimeoutError,
    VocalbornTasksError,
    error_cause,
)
from .facade import TaskManagerProtocol
from .manager import TaskManager
from .models import AnalysisRequest, AnalysisResult, TaskState, TaskStatus, parse_cursor
from .tasks.builtin import analyze_audio

__all__ = [
    "ManagerDep",
    "ProblemError",
    "PublicError",
    "StatusView",
    "Submitted",
    "TaskManagerProtocol",
    "analysis_router",
    "get_manager",
    "install_error_handlers",
    "manager_lifespan",
    "problem_response",
]

logger = logging.getLogger(__name__)

_STATE_KEY = "vocalborn_manager"
#: Seconds a client is told to wait before retrying a 503 or polling a running task again.
RETRY_AFTER_S = 5
POLL_AFTER_S = 1
_CHUNK = 256 * 1024


# --- lifespan and dependency -------------------------------------------------------------------
def manager_lifespan(
    settings: TaskSettings | None = None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that opens the app's one :class:`TaskManager` and closes it.

    Nothing connects before the first request that needs Redis.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with TaskManager(settings) as manager:
            setattr(app.state, _STATE_KEY, manager)
            try:
                yield
            finally:
                delattr(app.state, _STATE_KEY)

    return lifespan


def get_manager(request: Request) -> TaskManagerProtocol:
    """Dependency: the app's :class:`TaskManager` (opened by :func:`manager_lifespan`).

    Typed as :class:`TaskManagerProtocol`, the only surface the routes use, so a test can
    override it with an in-memory manager (``app.dependency_overrides[get_manager]``; see
    :func:`vocalborn_tasks.testing.web.service_client`).
    """
    manager: TaskManagerProtocol | None = getattr(request.app.state, _STATE_KEY, None)
    if manager is None:
        raise ConfigurationError(
            "no TaskManager: create the app with FastAPI(lifespan=manager_lifespan(settings))"
        )
    return manager


#: ``manager: ManagerDep`` in a route's signature.
ManagerDep = Annotated[TaskManagerProtocol, Depends(get_manager)]


# --- errors --------------------------------------------------------------------------------------
class ProblemError(Exception):
    """An HTTP problem raised by the router itself (e.g. an upload over the size cap)."""

    def __init__(self, status: int, code: str, detail: str, *, cause: ErrorCause = "input") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.cause = cause


def _status_of(exc: VocalbornTasksError) -> int:
    if isinstance(exc, TaskLostError):
        return 410
    if isinstance(exc, TaskNotFoundError):
        return 404
    if isinstance(exc, TaskRevokedError):
        return 409
    if isinstance(exc, TaskTimeoutError):
        return 504
    if isinstance(exc, BrokerError):
        return 503
    if isinstance(exc, InvalidRequestError | AudioError):
        return 422
    if isinstance(exc, TaskFailedError):
        return 422 if exc.cause == "input" else 500
    return 500


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    cause: ErrorCause,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An ``application/problem+json`` response with the library's ``code`` and ``cause``."""
    body: dict[str, Any] = {
        "type": f"urn:vocalborn-tasks:error:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "cause": cause,
        **extra,
    }
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VocalbornTasksError)
    status = _status_of(exc)
    extra: dict[str, Any] = {}
    task_id = getattr(exc, "task_id", None)
    if task_id is not None:
        extra["task_id"] = task_id
    if isinstance(exc, InvalidRequestError) and exc.errors:
        extra["errors"] = exc.errors
    headers = None
    if isinstance(exc, BrokerUnavailableError):  # not an auth failure: waiting cannot fix it
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    # The detail with server paths stays in the log; the client gets the public message.
    log = logger.warning if status >= 500 else logger.info
    log("%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code, exc)
    return problem_response(
        status, exc.code, exc.public_message, cause=exc.cause, headers=headers, **extra
    )


def _router_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.code, exc.detail, cause=exc.cause)


def _validation_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
    return problem_response(
        422, "invalid_request", "the request is invalid", cause="input", errors=errors
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every library error (and FastAPI's request validation) to problem+json.

    ========================================= =====================================
    ``InvalidRequestError``, ``AudioError``    422
    ``TaskFailedError``                        422 if ``cause == "input"``, else 500
    ``TaskNotFoundError`` / ``TaskLostError``  404 / 410
    ``TaskRevokedError``                       409
    ``BrokerUnavailableError``                 503 with ``Retry-After``
    ``BrokerAuthError``                        503 without (waiting will not fix it)
    ``TaskTimeoutError``                       504
    anything else of the library               500
    ========================================= =====================================
    """
    app.add_exception_handler(VocalbornTasksError, _library_error)
    app.add_exception_handler(ProblemError, _router_problem)
    app.add_exception_handler(RequestValidationError, _validation_problem)


# --- response models -----------------------------------------------------------------------------
class PublicError(BaseModel):
    """A task's error as a client may see it: stable code, whose fault, a path-free message."""

    code: str
    cause: ErrorCause
    message: str
    retryable: bool


class StatusView(BaseModel):
    """A task's status for clients (what ``GET /{id}`` and each SSE event carry)."""

    task_id: str
    state: TaskState
    task_name: str | None = None
    step: str | None = None
    progress: float | None = None
    error: PublicError | None = None
    result: AnalysisResult | None = None

    @classmethod
    def of(cls, status: TaskStatus) -> StatusView:
        error = status.error
        return cls(
            task_id=status.task_id,
            state=status.state,
            task_name=status.task_name,
            step=status.step,
            progress=status.progress,
            error=None
            if error is None
            else PublicError(
                code=error.code,
                cause=error.cause,
                message=error.public_message,
                retryable=error.retryable,
            ),
            result=AnalysisResult.model_validate(status.result)
            if status.state is TaskState.SUCCESS and status.result is not None
            else None,
        )


class Submitted(BaseModel):
    """What ``POST /`` answers (202)."""

    task_id: str
    status_url: str
    result_url: str
    events_url: str


def _check_found(status: TaskStatus) -> TaskStatus:
    task_id = status.task_id
    if status.state is TaskState.LOST:
        raise TaskLostError(f"task {task_id} was lost by the server", task_id=task_id)
    if status.state in (TaskState.NOT_FOUND, TaskState.EXPIRED) or status.task_name not in (
        None,
        analyze_audio.name,
    ):
        raise TaskNotFoundError(f"no analysis {task_id}", task_id=task_id)
    return status


# --- uploads ---------------------------------------------------------------------------------
@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    path: Path | None = None
    size: int = 0


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    temp: list[Path] = field(default_factory=list)


_MAX_FIELD_BYTES = 4096
_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")


async def _receive_form(request: Request, upload_dir: Path, max_bytes: int) -> _Form:
    """Stream a multipart body: files straight to ``upload_dir`` (``.part``), fields to memory.

    Raises:
        ProblemError: not multipart (415), a file over ``max_bytes`` (413), a malformed body.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ProblemError(415, "invalid_request", "send the recordings as multipart/form-data")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > 2 * max_bytes + 65536:
        raise ProblemError(413, "upload_too_large", f"uploads are limited to {max_bytes} bytes")
    form = _Form()
    events: list[tuple[str, Any]] = []
    part = _Part()
    header_field, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part.headers[header_field.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = disp.get(b"name", b"").decode("utf-8", "replace")
        raw_name = disp.get(b"filename")
        part.filename = None if raw_name is None else raw_name.decode("utf-8", "replace")
        events.append(("begin", part))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", (part, bytes(data[start:end]))))

    def on_part_end() -> None:
        events.append(("end", part))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    batch = uuid.uuid4().hex
    files: dict[int, Any] = {}
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart's own errors: a malformed body
                raise ProblemError(400, "invalid_request", "malformed multipart body") from exc
            for kind, item in events:
                if kind == "begin" and item.filename is not None:
                    if item.name in form.files or len(form.temp) >= 2:
                        raise ProblemError(422, "invalid_request", "at most two recordings")
                    item.path = upload_dir / f".{batch}-{len(form.temp)}.part"
                    form.temp.append(item.path)
                    files[id(item)] = await anyio.open_file(item.path, "xb")
                elif kind == "data":
                    p, data = item
                    p.size += len(data)
                    if p.path is not None:
                        if p.size > max_bytes:
                            raise ProblemError(
                                413, "upload_too_large", f"uploads are limited to {max_bytes} bytes"
                            )
                        await files[id(p)].write(data)
                    else:
                        if p.size > _MAX_FIELD_BYTES:
                            raise ProblemError(422, "invalid_request", f"field {p.name} too long")
                        p.data.extend(data)
                elif kind == "end":
                    if item.path is not None:
                        await files.pop(id(item)).aclose()
                        if item.size == 0:
                            raise ProblemError(
                                422, "empty_audio", f"{item.name}: the file is empty"
                            )
                        suffix = Path(item.filename or "").suffix.lower()
                        suffix = suffix if _SUFFIX.fullmatch(suffix) else ".bin"
                        final = upload_dir / f"{batch}-{item.name or 'file'}{suffix}"
                        # Atomic: a worker or the cleanup never sees a half-written file.
                        await anyio.Path(item.path).rename(final)
                        form.temp[form.temp.index(item.path)] = final
                        form.files[item.name] = final
                    else:
                        form.fields[item.name] = item.data.decode("utf-8", "replace")
            events.clear()
        parser.finalize()
    except BaseException:
        for handle in files.values():
            with contextlib.suppress(Exception):
                await handle.aclose()
        await _remove(form.temp)
        raise
    return form


async def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            await anyio.Path(path).unlink(missing_ok=True)


def _inside_roots(path: Path, settings: TaskSettings) -> bool:
    resolved = Path(os.path.realpath(path))
    return any(resolved.is_relative_to(Path(os.path.realpath(r))) for r in settings.recording_roots)


# --- the router ------------------------------------------------------------------------------
def analysis_router(
    settings: TaskSettings,
    *,
    upload_dir: Path | None = None,
    max_upload_bytes: int = 32 * 1024 * 1024,
    keepalive_s: float = 15.0,
    max_wait_s: float = 60.0,
) -> APIRouter:
    """Routes to submit recordings and follow their analyses (see the module docstring).

    Args:
        settings: the same settings the app's manager uses.
        upload_dir: where uploads go; ``UPLOAD_DIR`` if omitted. It must lie inside one of
            ``RECORDING_ROOTS`` (the workers read the files from there; a worker's beat
            deletes them after ``UPLOAD_RETENTION``).
        max_upload_bytes: per file; a larger upload is refused with 413 while streaming.
        keepalive_s: an SSE comment is sent after this much silence (proxies close idle
            connections).
        max_wait_s: the longest ``?wait=`` a result long poll may ask for.

    Raises:
        ConfigurationError: no upload directory, no ``RECORDING_ROOTS``, or the directory
            outside them.
    """
    directory = upload_dir if upload_dir is not None else settings.upload_dir
    if directory is None:
        raise ConfigurationError("analysis_router: set UPLOAD_DIR (or pass upload_dir=)")
    if not settings.recording_roots:
        raise ConfigurationError(
            "analysis_router: RECORDING_ROOTS is empty; a web service that writes uploads must "
            "confine the workers to known directories (set RECORDING_ROOTS to include "
            f"{directory})"
        )
    if not _inside_roots(directory, settings):
        raise ConfigurationError(
            f"analysis_router: the upload directory {directory} is outside RECORDING_ROOTS"
        )
    uploads = Path(directory)
    router = APIRouter(tags=["analyses"])

    @router.post("", status_code=202, response_model=Submitted, name="submit_analysis")
    @router.post("/", status_code=202, response_model=Submitted, include_in_schema=False)
    async def submit_analysis(
        request: Request, response: Response, manager: ManagerDep
    ) -> Submitted:
        await anyio.Path(uploads).mkdir(parents=True, exist_ok=True)
        form = await _receive_form(request, uploads, max_upload_bytes)
        try:
            missing = [n for n in ("recording", "reference") if n not in form.files]
            if missing or "practice_record_id" not in form.fields:
                absent = missing + (
                    [] if "practice_record_id" in form.fields else ["practice_record_id"]
                )
                raise InvalidRequestError(
                    f"missing form fields: {', '.join(absent)}",
                    public=f"missing form fields: {', '.join(absent)}",
                    errors=[{"loc": ["body", n], "msg": "Field required"} for n in absent],
                )
            analysis = AnalysisRequest(
                practice_record_id=form.fields["practice_record_id"],
                language=form.fields.get("language") or None,
                recording=str(form.files["recording"]),
                reference=str(form.files["reference"]),
            )
            task_id = await manager.submit_audio_analysis(analysis)
        except BaseException:
            await _remove(form.temp)  # nothing was queued: leave nothing behind
            raise
        location = str(request.url_for("analysis_status", task_id=task_id))
        response.headers["Location"] = location
        return Submitted(
            task_id=task_id,
            status_url=location,
            result_url=str(request.url_for("analysis_result", task_id=task_id)),
            events_url=str(request.url_for("analysis_events", task_id=task_id)),
        )

    @router.get("/{task_id}", response_model=StatusView, name="analysis_status")
    async def analysis_status(task_id: str, manager: ManagerDep) -> StatusView:
        return StatusView.of(_check_found(await manager.get_task_status(task_id)))

    @router.get("/{task_id}/result", name="analysis_result")
    async def analysis_result(
        task_id: str,
        manager: ManagerDep,
        wait: Annotated[float, Query(ge=0)] = 20.0,
    ) -> Response:
        current = _check_found(await manager.get_task_status(task_id))
        # A finished task answers at once, whatever ``wait`` says (even 0).
        timeout = None if current.is_final else min(wait, max_wait_s)
        try:
            result = await manager.wait_for_result(task_id, timeout=timeout)
        except TaskTimeoutError:
            status = await manager.get_task_status(task_id)
            return JSONResponse(
                StatusView.of(status).model_dump(mode="json"),
                status_code=202,
                headers={"Retry-After": str(POLL_AFTER_S)},
            )
        return JSONResponse(result.model_dump(mode="json"))

    @router.post("/{task_id}/cancel", response_model=StatusView, name="cancel_analysis")
    async def cancel_analysis(task_id: str, manager: ManagerDep) -> StatusView:
        _check_found(await manager.get_task_status(task_id))
        return StatusView.of(await manager.cancel(task_id))

    @router.get("/{task_id}/events", name="analysis_events")
    async def analysis_events(
        task_id: str,
        manager: ManagerDep,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        seen = parse_cursor(last_event_id)
        if seen is not None and seen[1] == 4:
            return Response(status_code=204)  # it saw the final state: stop reconnecting
        _check_found(await manager.get_task_status(task_id))
        stream = manager.watch(task_id, after=last_event_id)
        return StreamingResponse(
            _sse(stream, keepalive_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


def _event(status: TaskStatus) -> str:
    data = json.dumps(StatusView.of(status).model_dump(mode="json"), separators=(",", ":"))
    return f"id: {status.cursor}\ndata: {data}\n\n"


async def _sse(stream: AsyncIterator[TaskStatus], keepalive_s: float) -> AsyncIterator[str]:
    """Events from ``stream``, a comment after each ``keepalive_s`` of silence."""
    queue: asyncio.Queue[TaskStatus | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for status in stream:
                await queue.put(status)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    pumping = asyncio.get_running_loop().create_task(pump())
    try:
        yield "retry: 1000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                code = getattr(item, "code", "internal")
                body = {
                    "code": code,
                    "cause": error_cause(code),
                    "detail": getattr(item, "public_message", "an internal error occurred"),
                }
                logger.warning("event stream ended by %s: %s", type(item).__name__, item)
                yield f"event: error\ndata: {json.dumps(body)}\n\n"
                return
            yield _event(item)
            if item.is_final:
                return
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
