"""A web API for practice recordings: upload the attempt, get a task id, follow the analysis.

Routes (from :func:`vocalborn_tasks.fastapi.analysis_router`): ``POST /analyses`` (multipart:
``recording``, ``practice_record_id``, ``reference_id``, ``language``) answers 202 with the task
id; ``GET /analyses/{id}`` status, ``GET /analyses/{id}/result`` long poll, ``POST
/analyses/{id}/cancel``, ``GET /analyses/{id}/events`` progress as server-sent events; ``GET
/live`` and ``GET /ready`` for the load balancer. The reference is the therapist's, found on the
server as ``REFERENCE_DIR/<reference_id>.<ext>``: a patient cannot upload one. ``current_user``
stands in for the host's authentication: each user sees only their own analyses. Errors are
problem+json with a stable ``code`` and ``cause``. Run it with a worker and beat alongside::

    export REDIS_URL=redis://127.0.0.1:6379 RECORDING_ROOTS='["/srv/recordings"]'
    export UPLOAD_DIR=/srv/recordings/uploads REFERENCE_DIR=/srv/recordings/references
    vocalborn-tasks worker & vocalborn-tasks beat &
    uvicorn --factory examples.fastapi_service:create_app --timeout-graceful-shutdown 5
"""

from __future__ import annotations

from fastapi import FastAPI, Header, HTTPException

from vocalborn_tasks import TaskSettings
from vocalborn_tasks import fastapi as web


def current_user(x_user: str | None = Header(None)) -> str:
    if not x_user:  # the host's authentication goes here (a session, a bearer token)
        raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
    return x_user


def create_app(settings: TaskSettings | None = None) -> FastAPI:
    settings = settings if settings is not None else TaskSettings()
    app = FastAPI(title="vocalborn analyses", lifespan=web.manager_lifespan(settings))
    web.install_error_handlers(app)
    app.include_router(web.analysis_router(settings, owner=current_user), prefix="/analyses")
    app.include_router(web.probes_router())
    return app
