"""The app the web tests serve with uvicorn: the library's router plus a few test-only routes.

Settings come from the environment (as in production); ``WEB_MAX_UPLOAD`` and
``WEB_KEEPALIVE`` set the router's upload cap and keep-alive interval. The caller's identity
(the router's ``owner``) is the ``X-User`` header, or ``?user=`` (EventSource sends no
headers); without one: 401. ``/page/{id}?user=`` is a page whose EventSource reports every
event it receives to ``/report`` (the browser test reads them back from ``/reports``).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from vocalborn_tasks import TaskSettings
from vocalborn_tasks.fastapi import (
    ManagerDep,
    analysis_router,
    install_error_handlers,
    manager_lifespan,
    probes_router,
)

PAGE = """<!doctype html><html><body><script>
const es = new EventSource("/analyses/%s/events?user=%s");
const send = (body) => fetch("/report", {method: "POST",
  headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
es.onmessage = (e) => {
  const d = JSON.parse(e.data);
  send({id: e.lastEventId, state: d.state, task_name: d.task_name, progress: d.progress});
  if (["SUCCESS", "FAILURE", "REVOKED", "LOST"].includes(d.state)) es.close();
};
es.onerror = () => send({error: es.readyState});
</script></body></html>"""


def current_user(request: Request) -> str:
    user = request.headers.get("x-user") or request.query_params.get("user")
    if not user:
        raise HTTPException(401, "who are you?")
    return user


def create_app() -> FastAPI:
    settings = TaskSettings()
    app = FastAPI(lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(probes_router())
    app.include_router(
        analysis_router(
            settings,
            owner=current_user,
            max_upload_bytes=int(os.environ.get("WEB_MAX_UPLOAD", str(8 * 1024 * 1024))),
            keepalive_s=float(os.environ.get("WEB_KEEPALIVE", "15")),
        ),
        prefix="/analyses",
    )
    # An operator's view without owners (unscoped: LOST is told from NOT_FOUND there).
    app.include_router(analysis_router(settings), prefix="/admin/analyses")
    reports: list[dict[str, Any]] = []

    @app.get("/wait/{task_id}")
    async def wait(task_id: str, manager: ManagerDep) -> Any:
        # A host route of its own: TaskTimeoutError becomes a 504 through the handlers.
        return await manager.wait_for_result(task_id, timeout=0.2)

    @app.get("/page/{task_id}", response_class=HTMLResponse)
    async def page(task_id: str, user: str) -> str:
        return PAGE % (task_id, user)

    @app.get("/host/{number}")
    async def host_route(number: int) -> int:
        # A host route of its own: its validation errors keep FastAPI's format.
        if number == 13:
            raise RuntimeError("a host bug")
        return number

    @app.post("/report")
    async def report(body: dict[str, Any]) -> None:
        reports.append(body)

    @app.get("/reports")
    async def get_reports() -> list[dict[str, Any]]:
        return reports

    return app
