"""A small web API in front of the task layer: upload two recordings, get a task id, poll it.

One :class:`TaskManager` serves the whole app (opened and closed by the lifespan); requests
return at once and the analysis runs on a worker. Run it with a worker alongside::

    export REDIS_URL=redis://127.0.0.1:6379
    vocalborn-tasks worker &
    uvicorn --factory examples.fastapi_service:create_app

    curl -F practice_record_id=rec-1 -F language=en \\
         -F recording=@attempt.wav -F reference=@reference.wav http://127.0.0.1:8000/analyses
    curl http://127.0.0.1:8000/analyses/<task_id>

Uploads are saved under ``upload_dir`` (default: ``VOCALBORN_TEMP_DIR``/uploads, so the
maintenance task deletes old ones). The worker must be able to read that directory (same
machine or a shared volume) and, if ``RECORDING_ROOTS`` is set, it must be one of them.

Errors: a request the library refuses before queueing (bad record id, a file outside
``RECORDING_ROOTS``, a file that is not audio at all) is a 422 with the library's message and
``code``; Redis down is a 503 with ``Retry-After``. A recording that only the analysis can find
fault with (undecodable, too short, no speech...) is accepted (202) and its task ends in
FAILURE; ``GET /analyses/{task_id}`` then shows ``error.code`` (``unreadable``, ...).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from vocalborn_tasks import (
    AnalysisRequest,
    AnalysisResult,
    BrokerUnavailableError,
    InvalidRequestError,
    TaskErrorInfo,
    TaskManager,
    TaskSettings,
    TaskState,
)

#: Refuse uploads larger than this (a minute of 48 kHz stereo WAV is about 11 MB).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
_ANALYSIS_TASK = "vocalborn.analyze_audio"


class Submitted(BaseModel):
    task_id: str


class AnalysisStatus(BaseModel):
    task_id: str
    state: TaskState
    progress: float | None = None
    step: str | None = None
    error: TaskErrorInfo | None = None
    result: AnalysisResult | None = None


def create_app(settings: TaskSettings | None = None, *, upload_dir: Path | None = None) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts (the server's startup)."""
    settings = settings if settings is not None else TaskSettings()
    uploads = upload_dir or (settings.temp_dir or Path(tempfile.gettempdir())) / "uploads"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.Path(uploads).mkdir(parents=True, exist_ok=True)
        async with TaskManager(settings) as manager:
            app.state.manager = manager
            yield

    app = FastAPI(title="vocalborn analyses", lifespan=lifespan)

    @app.exception_handler(BrokerUnavailableError)
    async def broker_unavailable(request: Request, exc: BrokerUnavailableError) -> JSONResponse:
        # The queue is down: the client may retry later (the message never holds a password).
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(InvalidRequestError)
    async def invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "code": exc.code},
            status_code=422,
        )

    @app.post("/analyses", status_code=202, response_model=Submitted)
    async def submit_analysis(
        request: Request,
        response: Response,
        recording: Annotated[UploadFile, File(description="the patient's attempt")],
        reference: Annotated[UploadFile, File(description="the reference recording")],
        practice_record_id: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
    ) -> Submitted:
        manager: TaskManager = request.app.state.manager
        try:  # check the form fields before storing anything
            analysis = AnalysisRequest(
                practice_record_id=practice_record_id, language=language or None
            )
        except ValidationError as exc:
            raise HTTPException(422, _errors(exc)) from None
        batch = uuid.uuid4().hex
        saved: list[Path] = []
        try:
            for upload, role in ((recording, "recording"), (reference, "reference")):
                saved.append(await _save(upload, uploads / f"{batch}-{role}"))
            task_id = await manager.submit_audio_analysis(
                analysis.model_copy(update={"recording": str(saved[0]), "reference": str(saved[1])})
            )
        except BaseException:
            for path in saved:  # nothing was queued: do not leave the files behind
                await anyio.Path(path).unlink(missing_ok=True)
            raise
        response.headers["Location"] = str(request.url_for("analysis_status", task_id=task_id))
        return Submitted(task_id=task_id)

    @app.get("/analyses/{task_id}", response_model=AnalysisStatus)
    async def analysis_status(request: Request, task_id: str) -> AnalysisStatus:
        manager: TaskManager = request.app.state.manager
        st = await manager.get_task_status(task_id)
        if st.state in (TaskState.NOT_FOUND, TaskState.EXPIRED) or st.task_name not in (
            None,
            _ANALYSIS_TASK,
        ):
            raise HTTPException(404, f"no analysis {task_id}")
        result = AnalysisResult.model_validate(st.result) if st.state is TaskState.SUCCESS else None
        return AnalysisStatus(
            task_id=st.task_id,
            state=st.state,
            progress=st.progress,
            step=st.step,
            error=st.error,
            result=result,
        )

    return app


async def _save(upload: UploadFile, stem: Path) -> Path:
    """Copy an upload to ``stem`` + its (sanitised) suffix; refuse empty or oversized files."""
    suffix = Path(upload.filename or "").suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = ".bin"
    target = stem.with_name(stem.name + suffix)
    size = 0
    async with await anyio.open_file(target, "wb") as out:
        while chunk := await upload.read(1024 * 1024):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                await out.aclose()
                await anyio.Path(target).unlink(missing_ok=True)
                raise HTTPException(
                    413,
                    f"{upload.filename}: larger than {MAX_UPLOAD_BYTES} bytes",
                )
            await out.write(chunk)
    if size == 0:
        await anyio.Path(target).unlink(missing_ok=True)
        raise HTTPException(422, f"{upload.filename}: empty file")
    return target


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
