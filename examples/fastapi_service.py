"""A web API for practice recordings: upload two files, get a task id, follow the analysis.

Routes (from :func:`vocalborn_tasks.fastapi.analysis_router`): ``POST /analyses`` (multipart:
``recording``, ``reference``, ``practice_record_id``, ``language``) answers 202 with the task id;
``GET /analyses/{id}`` status, ``GET /analyses/{id}/result`` long poll, ``POST
/analyses/{id}/cancel``, ``GET /analyses/{id}/events`` progress as server-sent events. Errors
are problem+json with a stable ``code`` and ``cause``. Run it with a worker and beat alongside::

    export REDIS_URL=redis://127.0.0.1:6379 RECORDING_ROOTS='["/srv/recordings"]'
    export UPLOAD_DIR=/srv/recordings/uploads   # deleted after UPLOAD_RETENTION (1 day)
    vocalborn-tasks worker & vocalborn-tasks beat &
    uvicorn --factory examples.fastapi_service:create_app
"""

from __future__ import annotations

from fastapi import FastAPI

from vocalborn_tasks import TaskSettings
from vocalborn_tasks.fastapi import analysis_router, install_error_handlers, manager_lifespan


def create_app(settings: TaskSettings | None = None) -> FastAPI:
    """Build the app; nothing connects until the first request."""
    settings = settings if settings is not None else TaskSettings()
    app = FastAPI(title="vocalborn analyses", lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(analysis_router(settings), prefix="/analyses")
    return app
