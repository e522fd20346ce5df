"""Test a FastAPI app built on :mod:`vocalborn_tasks.fastapi` without a server or a worker.

:func:`service_client` builds the host's app from its factory with settings whose uploads go
to a temporary directory, puts an in-memory manager behind the router
(``app.dependency_overrides`` on :func:`~vocalborn_tasks.fastapi.get_manager`), runs the app's
lifespan, and hands back an ``httpx.AsyncClient`` that calls the app in-process::

    async def test_submit(tmp_path):
        async with service_client(create_app, tmp_path) as service:
            response = await service.http.post("/analyses", data=..., files=...)
            assert response.status_code == 202
            assert service.manager.submitted[0].request.language == "en"

Needs ``fastapi`` and ``httpx`` (``pip install 'vocalborn-tasks[fastapi]' httpx``; FastAPI's
own ``TestClient`` needs httpx too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import httpx
except ImportError as exc:  # the [testing] extra leaves the web stack out
    raise ImportError(
        "vocalborn_tasks.testing.web needs httpx and FastAPI: "
        "pip install 'vocalborn-tasks[fastapi]' httpx"
    ) from exc

from ..config import TaskSettings
from ..fastapi import get_manager
from .fake import FakeTaskManager
from .settings import isolated_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServiceClient", "service_client", "service_settings"]


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """What :func:`service_client` yields.

    Attributes:
        http: calls the app in-process (``base_url`` ``http://test``).
        manager: the in-memory manager behind the routes: drive its tasks, read
            ``manager.submitted``.
        app: the app, as built by the factory.
        settings: the settings it was built with (``UPLOAD_DIR`` in the temporary directory).
    """

    http: httpx.AsyncClient
    manager: FakeTaskManager
    app: FastAPI
    settings: TaskSettings


def service_settings(directory: Path, base: TaskSettings | None = None) -> TaskSettings:
    """``base`` (isolated defaults if omitted) with uploads in ``directory/uploads`` and
    references in ``directory/references`` (created; a test puts ``<reference_id>.flac``
    files there, which the router's ``reference_id`` then names).

    ``directory`` is added to ``RECORDING_ROOTS``, as the router requires of its upload
    and reference directories, so the manager accepts the files.
    """
    settings = base if base is not None else isolated_settings()
    (directory / "references").mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "recording_roots": [*settings.recording_roots, directory],
            "upload_dir": directory / "uploads",
            "reference_dir": directory / "references",
        }
    )


@asynccontextmanager
async def service_client(
    create_app: Callable[[TaskSettings], FastAPI],
    directory: Path,
    *,
    settings: TaskSettings | None = None,
    hold: bool = False,
    base_url: str = "http://test",
) -> AsyncIterator[ServiceClient]:
    """Build, start and call the host's app with a :class:`FakeTaskManager` behind it.

    Args:
        create_app: the host's app factory, taking the settings (as
            ``examples/fastapi_service.py``'s ``create_app`` does).
        directory: a temporary directory (``tmp_path``): uploads go to ``directory/uploads``,
            references are looked up in ``directory/references``.
        settings: the app's settings before the upload directory is set (isolated defaults if
            omitted).
        hold: start the fake with :meth:`FakeTaskManager.hold` on (tasks stay PENDING).
        base_url: the client's base URL.
    """
    app_settings = service_settings(directory, settings)
    app = create_app(app_settings)
    transport = httpx.ASGITransport(app=app)
    async with FakeTaskManager(app_settings, hold=hold) as fake:
        app.dependency_overrides[get_manager] = lambda: fake
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url=base_url) as http,
            ):
                yield ServiceClient(http=http, manager=fake, app=app, settings=app_settings)
        finally:
            app.dependency_overrides.pop(get_manager, None)
