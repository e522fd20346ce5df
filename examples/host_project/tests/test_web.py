"""Style 3, the web app with the fake behind its routes: no server, no worker.

``service_client`` builds the app from its factory with uploads in ``tmp_path``, overrides the
manager dependency with a ``FakeTaskManager``, runs the lifespan and calls the app in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")

from speech_service.app import create_app

from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.testing.web import service_client

pytestmark = pytest.mark.anyio


def add_reference(directory: Path) -> None:
    """The therapist's reference recording, where the router looks ``sentence-1`` up."""
    (directory / "references").mkdir(exist_ok=True)
    (directory / "references" / "sentence-1.flac").write_bytes(
        sample_path("en_reference").read_bytes()
    )


def upload(record_id: str) -> dict[str, object]:
    return {
        "data": {"practice_record_id": record_id, "language": "en", "reference_id": "sentence-1"},
        "files": {
            "recording": ("attempt.flac", sample_path("en_other_voice").read_bytes()),
        },
    }


async def test_upload_then_result(tmp_path: Path) -> None:
    add_reference(tmp_path)
    async with service_client(create_app, tmp_path, hold=True) as service:
        response = await service.http.post("/analyses", **upload("web-1"))
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        assert (await service.http.get(f"/analyses/{task_id}")).json()["state"] == "PENDING"
        await service.manager.run(task_id)  # the real engine, on the uploaded files
        result = await service.http.get(f"/analyses/{task_id}/result")
        assert result.status_code == 200
        assert result.json()["practice_record_id"] == "web-1"


async def test_a_failed_analysis_is_a_problem_response(tmp_path: Path) -> None:
    add_reference(tmp_path)
    async with service_client(create_app, tmp_path, hold=True) as service:
        task_id = (await service.http.post("/analyses", **upload("web-2"))).json()["task_id"]
        service.manager.fail(task_id, "no_speech")
        response = await service.http.get(f"/analyses/{task_id}/result")
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "no_speech"
