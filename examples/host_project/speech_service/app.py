"""The host's web app: the library's router plus the app factory the tests build it with."""

from __future__ import annotations

from fastapi import FastAPI

from vocalborn_tasks import TaskSettings
from vocalborn_tasks.fastapi import analysis_router, install_error_handlers, manager_lifespan


def create_app(settings: TaskSettings | None = None) -> FastAPI:
    """Build the app; nothing connects until the first request."""
    settings = settings if settings is not None else TaskSettings()
    app = FastAPI(title="speech service", lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(analysis_router(settings), prefix="/analyses")
    return app
