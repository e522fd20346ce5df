"""FastAPI integration: one manager per app, errors as problem+json, an analysis router.

Install with ``pip install 'vocalborn-tasks[fastapi]'``. A whole service::

    from fastapi import FastAPI
    from vocalborn_tasks import TaskSettings
    from vocalborn_tasks.fastapi import (
        analysis_router, install_error_handlers, manager_lifespan, probes_router)

    settings = TaskSettings()  # RECORDING_ROOTS, UPLOAD_DIR and REFERENCE_DIR inside them
    app = FastAPI(lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(analysis_router(settings, owner=current_user), prefix="/analyses")
    app.include_router(probes_router())  # GET /live, GET /ready

Routes of :func:`analysis_router` (relative to its prefix):

========================== ==================================================================
``POST /``                 multipart upload (``recording`` file, ``reference_id``,
                           ``practice_record_id``, ``language``): the recording is streamed
                           to ``UPLOAD_DIR`` with a size cap and an atomic rename, the
                           reference is resolved *on the server* from ``reference_id``; 202
                           with the task id, ``duplicate`` and relative links (``Location``)
``GET /{id}``              the task's status (public error messages only), with its place in
                           the queue and an estimated wait while it waits
``GET /{id}/result``       long poll: 200 with the result, or 202 + ``Retry-After`` while it
                           runs (``?wait=`` seconds, at most ``max_wait_s``); a broker blip
                           inside the wait is ridden out
``POST /{id}/cancel``      cancel; returns the status
``GET /{id}/events``       server-sent events: one per status, a unique ``id`` (the status
                           cursor and a sequence number), ``retry:``, keep-alive comments;
                           ``Last-Event-ID`` resumes after that status (204 when it was the
                           final one: EventSource stops reconnecting). During a broker outage
                           the stream opens and waits inside; it ends when the app shuts down
========================== ==================================================================

**Owners.** ``owner=`` is a FastAPI dependency returning the caller's identity (a string) or
raising the host's own 401/403. Every task submitted through the router then records its owner
(a digest: see :meth:`vocalborn_tasks.TaskManager`), de-duplication is per (owner, practice
record), and every route answers 404 (never 403: an id's existence is not confirmed) for
another owner's task.

Errors are ``application/problem+json`` (RFC 9457) with ``code`` and ``cause`` added: 422 a bad
request or recording, 404 unknown task, 410 lost, 409 cancelled, 413 upload too large, 415 not
multipart, 503 broker unavailable (with ``Retry-After``), 504 a wait that ran out, 500 anything
else. The ``detail`` is the error's public message: never a server path.

Uploads are patients' voices: the app deletes an upload when its task reaches a final state
(``delete_uploads=True``), and a duplicate's upload at once; the maintenance task (``beat``)
deletes what is left (e.g. after an app restart) once older than ``UPLOAD_RETENTION``.
This module imports FastAPI and Starlette, never Celery.
"""

from __future__ import annotations

try:
    import anyio
    from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from fastapi.routing import APIRoute
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # the extra is not installed: say what to do, in one line
    raise ImportError(
        "vocalborn_tasks.fastapi needs FastAPI: pip install 'vocalborn-tasks[fastapi]'"
    ) from None

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from .config import TaskSettings
from .errors import (
    ERROR_CODES,
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
    UnknownReferenceError,
    VocalbornTasksError,
    error_cause,
)
from .facade import TaskManagerProtocol
from .manager import TaskManager
from .models import AnalysisRequest, AnalysisResult, TaskState, TaskStatus, parse_cursor
from .monitor import Monitor
from .tasks.builtin import analyze_audio

__all__ = [
    "AUDIO_EXTENSIONS",
    "ManagerDep",
    "Problem",
    "ProblemError",
    "PublicError",
    "ReferenceLookup",
    "StatusView",
    "Submitted",
    "TaskManagerProtocol",
    "UnknownReferenceError",
    "analysis_router",
    "get_manager",
    "install_error_handlers",
    "manager_lifespan",
    "probes_router",
    "problem_response",
    "request_shutdown",
]

logger = logging.getLogger(__name__)

_STATE_KEY = "vocalborn_manager"
_WEB_KEY = "vocalborn_web"
#: Seconds a client is told to wait before retrying a 503 or polling a running task again.
RETRY_AFTER_S = 5
POLL_AFTER_S = 1
#: What an SSE client waits before reconnecting (the ``retry:`` field), in milliseconds.
SSE_RETRY_MS = 1000
_CHUNK = 256 * 1024
#: Extensions the default reference lookup tries, in this order (``<id><ext>``).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".webm")
_REFERENCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: ``references=``: a reference id -> its location (a path or URL the workers can read), sync
#: or async; raises :class:`UnknownReferenceError` for an id it does not know.
ReferenceLookup = Callable[[str], "str | Path | Awaitable[str | Path]"]


# --- lifespan, shutdown and dependencies -----------------------------------------------------
@dataclass(eq=False)
class _WebState:
    """What the app's lifespan owns besides the manager: the shutdown flag, the monitor (queue
    positions, readiness) and the background deletions of uploads."""

    manager: TaskManager
    monitor: Monitor
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def _chain_exit_signals(
    loop: asyncio.AbstractEventLoop, event: asyncio.Event
) -> Callable[[], None]:
    """Set ``event`` on SIGTERM/SIGINT, then run whatever handler was there (the server's).

    uvicorn stops accepting on SIGTERM, then waits for open responses to finish *before* the
    lifespan shutdown runs: an SSE stream that only ended at lifespan shutdown would hold a
    deploy until SIGKILL. So the streams listen to the signal itself. The server's handler
    (uvicorn installs its own with ``signal.signal``) still runs; returns the undo.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, Any] = {}

    def make(previous: Any) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(event.set)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:  # nobody else handles it: the default action
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        return handler

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if previous is None or previous == signal.SIG_IGN:
            continue
        handler = make(previous)
        signal.signal(sig, handler)
        installed[sig] = (handler, previous)

    def undo() -> None:
        for sig, (handler, previous) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

    return undo


def manager_lifespan(
    settings: TaskSettings | None = None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that opens the app's one :class:`TaskManager` and closes it.

    Nothing connects before the first request that needs Redis, so the app starts (and a
    deploy rolls) while Redis is down. It also ends open event streams and long polls as soon
    as the process is told to stop (SIGTERM/SIGINT, or the lifespan's own shutdown), so a
    server exits within its normal grace; see :func:`request_shutdown`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with TaskManager(settings) as manager, Monitor(manager.settings) as monitor:
            state = _WebState(manager, monitor)
            setattr(app.state, _STATE_KEY, manager)
            setattr(app.state, _WEB_KEY, state)
            undo = _chain_exit_signals(asyncio.get_running_loop(), state.shutdown)
            try:
                yield
            finally:
                undo()
                state.shutdown.set()
                for task in list(state.background):
                    task.cancel()
                if state.background:
                    await asyncio.gather(*state.background, return_exceptions=True)
                delattr(app.state, _STATE_KEY)
                delattr(app.state, _WEB_KEY)

    return lifespan


def request_shutdown(app: FastAPI) -> None:
    """End the app's open event streams and long polls now (a server without signals)."""
    state: _WebState | None = getattr(app.state, _WEB_KEY, None)
    if state is not None:
        state.shutdown.set()


def _web_state(request: Request) -> _WebState | None:
    state: _WebState | None = getattr(request.app.state, _WEB_KEY, None)
    return state


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


def _no_owner() -> str | None:
    return None


# --- errors --------------------------------------------------------------------------------------
class ProblemError(Exception):
    """An HTTP problem raised by the router itself (e.g. an upload over the size cap)."""

    def __init__(self, status: int, code: str, detail: str, *, cause: ErrorCause = "input") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.cause = cause


class Problem(BaseModel):
    """An ``application/problem+json`` body (RFC 9457) with the library's ``code`` and ``cause``."""

    type: str = Field(description="urn:vocalborn-tasks:error:<code>")
    title: str
    status: int
    detail: str = Field(description="a public message: safe to show, never a server path")
    code: str = Field(description="stable; see docs/errors.md")
    cause: ErrorCause = Field(description="input: the request or recording; system: the back end")
    task_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="per invalid field: loc and msg"
    )


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


def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "no_route", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if exc.status_code < 400 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail if isinstance(exc.detail, str) else ERROR_CODES[code].public_message
    if code != "http_error":
        detail = ERROR_CODES[code].public_message
    cause: ErrorCause = "system" if exc.status_code >= 500 else "input"
    return problem_response(
        exc.status_code, code, detail, cause=cause, headers=dict(exc.headers or {})
    )


def _unhandled_problem(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's server-error middleware logs the traceback and re-raises after this answer.
    return problem_response(500, "internal", ERROR_CODES["internal"].public_message, cause="system")


def install_error_handlers(app: FastAPI, *, scope: Literal["library", "app"] = "library") -> None:
    """Answer errors as problem+json.

    ========================================= =====================================
    ``InvalidRequestError``, ``AudioError``    422
    ``TaskFailedError``                        422 if ``cause == "input"``, else 500
    ``TaskNotFoundError`` / ``TaskLostError``  404 / 410
    ``TaskRevokedError``                       409
    ``BrokerUnavailableError``                 503 with ``Retry-After``
    ``BrokerAuthError``                        503 without (waiting will not fix it)
    ``TaskTimeoutError``                       504
    anything else of the library               500
    an unknown URL / a wrong method            404 ``no_route`` / 405 ``method_not_allowed``
    the host's ``HTTPException``               its status, headers and detail, ``http_error``
    any other unhandled exception              500 ``internal`` (logged with its traceback)
    ========================================= =====================================

    Args:
        scope: ``"library"`` (the default) leaves the format of the host's own request
            validation errors (FastAPI's 422 ``{"detail": [...]}``) alone; the analysis
            router's own validation errors are problem+json either way. ``"app"`` answers
            every request validation error of the app as problem+json
            (``invalid_request`` with ``errors``).
    """
    app.add_exception_handler(VocalbornTasksError, _library_error)
    app.add_exception_handler(ProblemError, _router_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(Exception, _unhandled_problem)
    if scope == "app":
        app.add_exception_handler(RequestValidationError, _validation_problem)
    elif scope != "library":
        raise ConfigurationError(f"install_error_handlers: scope must be library or app: {scope}")


class _ProblemRoute(APIRoute):
    """The router's routes answer their own validation errors as problem+json, whatever the
    app's handlers do with the host's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_problem(request, exc)

        return route


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
    position: int | None = Field(
        default=None, description="while waiting: 1 = the next task a worker takes"
    )
    estimated_wait_s: float | None = Field(
        default=None, description="while waiting: seconds until a worker should start it"
    )

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
    """What ``POST /`` answers (202). The URLs are relative to the server (paths)."""

    task_id: str
    practice_record_id: str
    duplicate: bool = Field(
        description="the practice record already had an analysis in flight: this is its id, "
        "and the upload was not used"
    )
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


async def _with_position(
    request: Request, manager: TaskManagerProtocol, view: StatusView
) -> StatusView:
    """Add the queue position and wait estimate of a waiting task (best effort: a read that
    fails leaves them out; an in-memory manager has no queue)."""
    state = _web_state(request)
    if view.state is not TaskState.PENDING or state is None or manager is not state.manager:
        return view
    try:
        where = await state.monitor.get_task_position(view.task_id)
    except BrokerError:
        return view
    if where.state != "waiting":
        return view
    return view.model_copy(
        update={"position": where.position, "estimated_wait_s": where.estimated_wait_s}
    )


async def _until(
    call: Callable[[], Awaitable[Any]],
    deadline: float,
    stop: asyncio.Event | None,
    *,
    what: str,
) -> Any:
    """``call()``, retried with backoff while the broker is unavailable, until ``deadline``
    (monotonic): a blip inside a long poll's wait is waited out, not answered 503."""
    pause = 0.05
    warned = False
    while True:
        try:
            return await call()
        except BrokerUnavailableError:
            if time.monotonic() + pause > deadline or (stop is not None and stop.is_set()):
                raise
            if not warned:
                warned = True
                logger.warning("%s: broker unavailable; waiting within the long poll", what)
            await _sleep_or(pause, stop)
            pause = min(pause * 2, 1.0)


async def _sleep_or(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


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


async def _receive_form(
    request: Request, upload_dir: Path, max_bytes: int, *, file_fields: frozenset[str]
) -> _Form:
    """Stream a multipart body: files straight to ``upload_dir`` (``.part``), fields to memory.

    Only ``file_fields`` may carry a file: a ``reference`` file the router does not accept is
    refused when its part begins, before a byte of it is stored.

    Raises:
        ProblemError: not multipart (415), a file over ``max_bytes`` (413), a malformed body,
            a file in a field that takes none (422).
    """
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
                    if item.name == "reference" and item.name not in file_fields:
                        raise ProblemError(
                            422,
                            "reference_upload_not_allowed",
                            "the reference recording is chosen by the service: send reference_id",
                        )
                    if item.name not in file_fields:
                        raise ProblemError(
                            422, "invalid_request", f"no file expected in {item.name}"
                        )
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


# --- references ------------------------------------------------------------------------------
def _directory_references(directory: Path) -> Callable[[str], Awaitable[str]]:
    """The default lookup: ``<directory>/<reference_id><ext>`` for the first existing ext."""

    def find(reference_id: str) -> str:
        for ext in AUDIO_EXTENSIONS:
            path = directory / f"{reference_id}{ext}"
            if path.is_file():
                return str(path)
        raise UnknownReferenceError(f"no reference recording {reference_id}")

    async def lookup(reference_id: str) -> str:
        return await anyio.to_thread.run_sync(find, reference_id)

    return lookup


async def _resolve_reference(lookup: ReferenceLookup, reference_id: str) -> str:
    if not _REFERENCE_ID.fullmatch(reference_id):
        raise InvalidRequestError(
            "reference_id must be a name (letters, digits, '-', '_', '.'), not a path",
            public="reference_id must be a name (letters, digits, '-', '_', '.'), not a path",
            errors=[{"loc": ["body", "reference_id"], "msg": "not a reference name"}],
        )
    found = lookup(reference_id)
    if inspect.isawaitable(found):
        found = await found
    return str(found)


# --- the router ------------------------------------------------------------------------------
class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response (its media type also documents the route)."""

    media_type = "text/event-stream"


_PROBLEM_SCHEMA = Problem.model_json_schema()
_PROBLEM_TEXT = {
    404: "no such analysis (or another owner's: never confirmed), or an unknown URL",
    409: "the analysis was cancelled",
    410: "the server lost the task: submit it again",
    413: "an upload over the size cap",
    415: "the body is not multipart/form-data",
    422: "an invalid request or recording (see code)",
    503: "the broker is unavailable (Retry-After) or misconfigured",
    504: "a wait ran out",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _PROBLEM_TEXT[status],
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def _upload_body(allow_reference_upload: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "recording": {
            "type": "string",
            "format": "binary",
            "description": "the patient's attempt (an audio file)",
        },
        "practice_record_id": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
            "maxLength": 128,
            "description": "the host's id of the practice record (de-duplication key)",
        },
        "reference_id": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            "description": "the therapist's reference recording, resolved on the server",
        },
        "language": {
            "type": "string",
            "pattern": r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
            "maxLength": 35,
            "description": "BCP 47 tag, e.g. zh-TW",
        },
    }
    required = ["recording", "practice_record_id", "reference_id"]
    if allow_reference_upload:
        properties["reference"] = {
            "type": "string",
            "format": "binary",
            "description": "a reference recording file instead of reference_id",
        }
        required.remove("reference_id")
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": required, "properties": properties}
            }
        },
    }


def _parse_event_id(value: str | None) -> tuple[str | None, int]:
    """``Last-Event-ID`` -> (status cursor, sequence number); ids are ``<cursor>-<seq>``."""
    if not value:
        return None, 0
    cursor, _, seq = value.partition("-")
    return cursor, int(seq) if seq.isdigit() else 0


def _path_for(request: Request, name: str, task_id: str) -> str:
    """The route's path (with the app's ``root_path``): a relative link, right behind any
    proxy that forwards the path unchanged."""
    return request.url_for(name, task_id=task_id).path


def analysis_router(
    settings: TaskSettings,
    *,
    owner: Callable[..., Any] | None = None,
    references: ReferenceLookup | None = None,
    allow_reference_upload: bool = False,
    upload_dir: Path | None = None,
    max_upload_bytes: int = 32 * 1024 * 1024,
    keepalive_s: float = 15.0,
    max_wait_s: float = 60.0,
    delete_uploads: bool = True,
) -> APIRouter:
    """Routes to submit recordings and follow their analyses (see the module docstring).

    Args:
        settings: the same settings the app's manager uses.
        owner: a FastAPI dependency (any callable FastAPI can inject) returning the caller's
            identity as a string, or raising the host's own 401/403. With it, tasks are
            recorded, de-duplicated and visible per owner; another owner's task is a 404.
        references: how a ``reference_id`` becomes a location the workers can read (sync or
            async; raise :class:`UnknownReferenceError` for an unknown id). By default the
            file ``<reference_id><ext>`` (``AUDIO_EXTENSIONS``) in ``REFERENCE_DIR``.
        allow_reference_upload: accept an uploaded ``reference`` file too (a therapist's own
            tool). Off by default: a patient who uploads their own attempt as the reference
            scores 100, so such a request is refused (422 ``reference_upload_not_allowed``).
        upload_dir: where uploads go; ``UPLOAD_DIR`` if omitted. It must lie inside one of
            ``RECORDING_ROOTS`` (the workers read the files from there).
        max_upload_bytes: per file; a larger upload is refused with 413 while streaming.
        keepalive_s: an SSE comment is sent after this much silence (proxies close idle
            connections).
        max_wait_s: the longest ``?wait=`` a result long poll may ask for (the schema's
            maximum; more is a 422).
        delete_uploads: delete an upload once its task reaches a final state (done by this
            app while it runs; ``UPLOAD_RETENTION`` is the backstop). A duplicate's upload
            is deleted at once whatever this says: it was never used.

    Raises:
        ConfigurationError: no upload directory, no ``RECORDING_ROOTS``, a directory outside
            them, or no way to find references (neither ``references``, ``REFERENCE_DIR``
            nor ``allow_reference_upload``).
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
    lookup: ReferenceLookup | None = references
    if lookup is None and settings.reference_dir is not None:
        if not _inside_roots(settings.reference_dir, settings):
            raise ConfigurationError(
                f"analysis_router: REFERENCE_DIR {settings.reference_dir} is outside "
                "RECORDING_ROOTS"
            )
        lookup = _directory_references(Path(settings.reference_dir))
    if lookup is None and not allow_reference_upload:
        raise ConfigurationError(
            "analysis_router: set REFERENCE_DIR (or pass references=) so references are "
            "resolved on the server from reference_id"
        )
    uploads = Path(directory)
    file_fields = frozenset({"recording", "reference"} if allow_reference_upload else {"recording"})
    owner_dep: Callable[..., Any] = owner if owner is not None else _no_owner
    router = APIRouter(tags=["analyses"], route_class=_ProblemRoute)

    @router.post(
        "",
        status_code=202,
        response_model=Submitted,
        name="submit_analysis",
        summary="Submit a recording for analysis",
        description=(
            "Multipart upload of the patient's recording; the reference is named by "
            "`reference_id` and resolved on the server. Answers 202 at once with the task id "
            "(`duplicate: true` when the practice record already had an analysis in flight "
            "for the same user) and a `Location` header."
        ),
        responses=_problems(413, 415, 422, 503),
        openapi_extra={"requestBody": _upload_body(allow_reference_upload)},
    )
    @router.post("/", status_code=202, response_model=Submitted, include_in_schema=False)
    async def submit_analysis(
        request: Request,
        response: Response,
        manager: ManagerDep,
        who: str | None = Depends(owner_dep),
    ) -> Submitted:
        await anyio.Path(uploads).mkdir(parents=True, exist_ok=True)
        form = await _receive_form(request, uploads, max_upload_bytes, file_fields=file_fields)
        try:
            absent = [n for n in ("recording",) if n not in form.files]
            if "practice_record_id" not in form.fields:
                absent.append("practice_record_id")
            reference_id = form.fields.get("reference_id")
            if "reference" not in form.files and not reference_id:
                absent.append("reference_id")
            if absent:
                raise InvalidRequestError(
                    f"missing form fields: {', '.join(absent)}",
                    public=f"missing form fields: {', '.join(absent)}",
                    errors=[{"loc": ["body", n], "msg": "Field required"} for n in absent],
                )
            if "reference" in form.files:
                if reference_id:
                    raise InvalidRequestError(
                        "send either reference_id or a reference file, not both",
                        public="send either reference_id or a reference file, not both",
                    )
                reference = str(form.files["reference"])
            else:
                assert lookup is not None
                assert reference_id is not None
                reference = await _resolve_reference(lookup, reference_id)
            analysis = AnalysisRequest(
                practice_record_id=form.fields["practice_record_id"],
                language=form.fields.get("language") or None,
                recording=str(form.files["recording"]),
                reference=reference,
            )
            (submitted,) = await manager.submit_analyses([analysis], owner=who)
        except BaseException:
            await _remove(form.temp)  # nothing was queued: leave nothing behind
            raise
        task_id = submitted.task_id
        state = _web_state(request)
        if submitted.duplicate:
            await _remove(form.temp)  # a patient's voice that nothing will read
        elif delete_uploads and state is not None:
            state.spawn(_delete_when_final(manager, task_id, who, list(form.temp)))
        location = _path_for(request, "analysis_status", task_id)
        response.headers["Location"] = location
        return Submitted(
            task_id=task_id,
            practice_record_id=analysis.practice_record_id,
            duplicate=submitted.duplicate,
            status_url=location,
            result_url=_path_for(request, "analysis_result", task_id),
            events_url=_path_for(request, "analysis_events", task_id),
        )

    @router.get(
        "/{task_id}",
        response_model=StatusView,
        name="analysis_status",
        summary="An analysis's status",
        description="The state, progress and public error; the result once it succeeded; "
        "the queue position and estimated wait while it waits.",
        responses=_problems(404, 410, 503),
    )
    async def analysis_status(
        task_id: str,
        request: Request,
        manager: ManagerDep,
        who: str | None = Depends(owner_dep),
    ) -> StatusView:
        view = StatusView.of(_check_found(await manager.get_task_status(task_id, owner=who)))
        return await _with_position(request, manager, view)

    @router.get(
        "/{task_id}/result",
        response_model=AnalysisResult,
        name="analysis_result",
        summary="Wait for an analysis's result (long poll)",
        description="200 with the result; 202 with the status and `Retry-After` when it has "
        "not finished within `wait` seconds. A broker blip inside the wait is waited out.",
        responses={
            202: {"model": StatusView, "description": "not finished yet: poll again"},
            **_problems(404, 409, 410, 422, 503, 504),
        },
    )
    async def analysis_result(
        task_id: str,
        request: Request,
        manager: ManagerDep,
        who: str | None = Depends(owner_dep),
        wait: float = Query(
            min(20.0, max_wait_s),
            ge=0,
            le=max_wait_s,
            description="seconds to wait for the result before answering 202",
        ),
    ) -> Response:
        state = _web_state(request)
        stop = state.shutdown if state is not None else None
        deadline = time.monotonic() + wait
        what = f"result of task {task_id}"
        current = _check_found(
            await _until(
                lambda: manager.get_task_status(task_id, owner=who), deadline, stop, what=what
            )
        )
        try:
            result = await _until(
                lambda: _wait_or_stop(manager, task_id, who, current, deadline, stop),
                deadline,
                stop,
                what=what,
            )
        except TaskTimeoutError:
            with contextlib.suppress(BrokerUnavailableError):
                current = await manager.get_task_status(task_id, owner=who)
            return JSONResponse(
                StatusView.of(current).model_dump(mode="json"),
                status_code=202,
                headers={"Retry-After": str(POLL_AFTER_S)},
            )
        return JSONResponse(result.model_dump(mode="json"))

    @router.post(
        "/{task_id}/cancel",
        response_model=StatusView,
        name="cancel_analysis",
        summary="Cancel an analysis",
        description="It will not start; a running one is stopped. Returns the status after.",
        responses=_problems(404, 410, 503),
    )
    async def cancel_analysis(
        task_id: str, manager: ManagerDep, who: str | None = Depends(owner_dep)
    ) -> StatusView:
        _check_found(await manager.get_task_status(task_id, owner=who))
        return StatusView.of(await manager.cancel(task_id, owner=who))

    @router.get(
        "/{task_id}/events",
        name="analysis_events",
        response_class=EventStreamResponse,
        summary="Follow an analysis (server-sent events)",
        description=(
            "One event per status (`data`: a StatusView as JSON; `id`: unique, resumable "
            "with `Last-Event-ID`), `retry:` and keep-alive comments. During a broker outage "
            "the stream opens and waits inside. 204 after the final event's id."
        ),
        responses={
            200: {
                "description": "the event stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            204: {"description": "the final status was already seen: stop reconnecting"},
            **_problems(404, 410),
        },
    )
    async def analysis_events(
        task_id: str,
        request: Request,
        manager: ManagerDep,
        who: str | None = Depends(owner_dep),
        last_event_id: str | None = Header(None),
    ) -> Response:
        cursor, seq = _parse_event_id(last_event_id)
        seen = parse_cursor(cursor)
        if seen is not None and seen[1] == 4:
            return Response(status_code=204)  # it saw the final state: stop reconnecting
        try:
            _check_found(await manager.get_task_status(task_id, owner=who))
        except BrokerUnavailableError:
            # Not a 503: EventSource gives up for good on one. Open and wait inside.
            logger.info("events of task %s: broker unavailable; the stream waits", task_id)
        state = _web_state(request)
        stream = _sse(
            manager,
            task_id,
            owner=who,
            after=cursor,
            seq=seq,
            keepalive_s=keepalive_s,
            stop=state.shutdown if state is not None else None,
        )
        return EventStreamResponse(
            stream, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    return router


async def _wait_or_stop(
    manager: TaskManagerProtocol,
    task_id: str,
    owner: str | None,
    current: TaskStatus,
    deadline: float,
    stop: asyncio.Event | None,
) -> AnalysisResult:
    """The result, or TaskTimeoutError at ``deadline`` or when the app shuts down."""
    # A finished task answers at once, whatever ``wait`` says (even 0).
    timeout = None if current.is_final else max(0.0, deadline - time.monotonic())
    waiter = asyncio.ensure_future(manager.wait_for_result(task_id, timeout=timeout, owner=owner))
    if stop is None:
        return await waiter
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            raise TaskTimeoutError(f"task {task_id}: the app is shutting down", task_id=task_id)
    return waiter.result()


async def _delete_when_final(
    manager: TaskManagerProtocol, task_id: str, owner: str | None, paths: list[Path]
) -> None:
    """Delete a task's uploads once it reaches a final state (cancelled at app shutdown:
    then ``UPLOAD_RETENTION`` deletes them)."""
    pause = 0.5
    while True:
        try:
            await manager.wait_for_result(task_id, owner=owner)
        except BrokerUnavailableError:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            continue
        except (TaskFailedError, TaskRevokedError, TaskNotFoundError):
            pass  # final (TaskLostError included): nothing will read the files again
        except VocalbornTasksError as exc:  # e.g. the manager closed: leave them to retention
            logger.info("uploads of task %s kept for UPLOAD_RETENTION: %s", task_id, exc.code)
            return
        break
    await _remove(paths)


async def _pump(
    source: AsyncIterator[TaskStatus], queue: asyncio.Queue[TaskStatus | BaseException | None]
) -> None:
    """Move ``source`` into ``queue``: each status, then None at its end, or the error."""
    try:
        async for status in source:
            await queue.put(status)
        await queue.put(None)
    except Exception as exc:
        await queue.put(exc)


class _Stop:
    """Sentinel: the app is shutting down."""


class _Idle:
    """Sentinel: nothing happened for ``keepalive_s``."""


_STOP, _IDLE = _Stop(), _Idle()


def _event(status: TaskStatus, seq: int) -> str:
    data = json.dumps(StatusView.of(status).model_dump(mode="json"), separators=(",", ":"))
    return f"id: {status.cursor}-{seq}\ndata: {data}\n\n"


async def _next_item(
    queue: asyncio.Queue[TaskStatus | BaseException | None],
    keepalive_s: float,
    stop: asyncio.Event | None,
) -> TaskStatus | BaseException | _Stop | _Idle | None:
    getter = asyncio.ensure_future(queue.get())
    waiters: set[asyncio.Future[Any]] = {getter}
    stopper = None
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        waiters.add(stopper)
    try:
        done, _ = await asyncio.wait(waiters, timeout=keepalive_s, return_when="FIRST_COMPLETED")
    finally:
        if stopper is not None:
            stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter in done:
        return getter.result()
    if stopper is not None and stopper in done:
        return _STOP
    return _IDLE


async def _sse(
    manager: TaskManagerProtocol,
    task_id: str,
    *,
    owner: str | None,
    after: str | None,
    seq: int,
    keepalive_s: float,
    stop: asyncio.Event | None,
) -> AsyncIterator[str]:
    """Events of ``watch``, a comment after each ``keepalive_s`` of silence; a broker outage
    is waited out inside the stream (with backoff); ends at a final state or at shutdown.

    Event ids are ``<cursor>-<seq>``: the cursor resumes the stream, the sequence number
    (carried over from ``Last-Event-ID``) keeps ids unique when a requeued task's progress
    goes back to a cursor it had before.
    """
    yield f"retry: {SSE_RETRY_MS}\n\n"
    pause = 0.05
    while True:
        queue: asyncio.Queue[TaskStatus | BaseException | None] = asyncio.Queue()
        stream = manager.watch(task_id, after=after, owner=owner)

        pumping = asyncio.get_running_loop().create_task(_pump(stream, queue))
        outage = False
        try:
            while True:
                item = await _next_item(queue, keepalive_s, stop)
                if isinstance(item, _Stop):
                    return  # the app shuts down: the client reconnects to the next one
                if isinstance(item, _Idle):
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                if isinstance(item, BrokerUnavailableError):
                    outage = True
                    break
                if isinstance(item, BaseException):
                    code = getattr(item, "code", "internal")
                    body = {
                        "code": code,
                        "cause": error_cause(code),
                        "detail": getattr(item, "public_message", "an internal error occurred"),
                    }
                    if isinstance(item, VocalbornTasksError):
                        logger.info("event stream of task %s ended: %s", task_id, code)
                    else:
                        logger.warning("event stream ended by %s", type(item).__name__)
                    yield f"event: error\ndata: {json.dumps(body)}\n\n"
                    return
                seq += 1
                after = item.cursor
                pause = 0.05
                yield _event(item, seq)
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
        if outage:
            yield ": waiting for the service\n\n"
            await _sleep_or(pause, stop)
            if stop is not None and stop.is_set():
                return
            pause = min(pause * 2, 1.0)


# --- probes ------------------------------------------------------------------------------------
def probes_router(*, queue: str = analyze_audio.queue) -> APIRouter:
    """``GET /live`` (the process answers) and ``GET /ready`` (it can serve analyses).

    Ready means: the app's manager reaches Redis and a live worker consumes ``queue``;
    otherwise 503 problem+json (``broker_unavailable`` or ``not_ready``). Point the load
    balancer's readiness check at ``/ready`` and the liveness check at ``/live`` (a Redis
    outage must not restart every web process).
    """
    router = APIRouter(tags=["probes"])

    @router.get("/live", summary="Liveness: the process answers")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get(
        "/ready",
        summary="Readiness: Redis answers and a worker consumes the analysis queue",
        responses=_problems(503),
    )
    async def ready(request: Request, manager: ManagerDep) -> Response:
        state = _web_state(request)
        await manager.ping()
        if state is None or manager is not state.manager:
            return JSONResponse({"status": "ready", "workers": None})
        workers = [w for w in await state.monitor.get_worker_stats() if queue in w.queues]
        if not workers:
            return problem_response(
                503,
                "not_ready",
                ERROR_CODES["not_ready"].public_message,
                cause="system",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return JSONResponse({"status": "ready", "workers": len(workers)})

    return router
