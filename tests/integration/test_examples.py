"""The examples, run as users run them: scripts as subprocesses, the web app in-process.

All of them talk to the session's real server and to one real worker started from
``examples/custom_worker.py`` (``celery -A examples.custom_worker worker``), which runs the
built-in tasks plus the example's own ``examples.word_count``. A worker without that task (the
shared ``worker`` fixture) must not run next to it: it would take the custom task off the
queue and reject it as unregistered.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from support import ROOT, WorkerProcess, flush, settings_env
from vocalborn_tasks import TaskSettings
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.samples import sample_path

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"
SCRIPT_TIMEOUT_S = 120.0
POLL_TIMEOUT_S = 60.0


class CustomWorker(WorkerProcess):
    """``celery -A examples.custom_worker worker``: the example's own worker module."""

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> CustomWorker:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TASK_", "CELERY_"))
        }
        env.update(settings_env(self.settings))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env["REMAP_SIGTERM"] = "SIGQUIT"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.custom_worker",
            "worker",
            "--pool",
            self.pool,
            "--concurrency",
            str(self.concurrency),
            "--queues",
            self.queues,
            "--hostname",
            self.hostname,
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(timeout)
        return self


@pytest.fixture(scope="module")
def examples_worker(
    base_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CustomWorker]:
    flush(base_settings)
    proc = CustomWorker(
        base_settings,
        name="examples",
        concurrency=2,
        pool="prefork",
        log_dir=tmp_path_factory.mktemp("example-logs"),
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def run_example(name: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/NAME`` the way a user would, with only REDIS_URL configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def assert_ok(proc: subprocess.CompletedProcess[str], worker: WorkerProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
        f"worker log:\n{worker.log_tail()}"
    )
    assert "Traceback" not in proc.stderr


# --- scripts -----------------------------------------------------------------------------------


def test_submit_and_wait(redis_url: str, examples_worker: CustomWorker) -> None:
    proc = run_example("submit_and_wait.py", redis_url)
    assert_ok(proc, examples_worker)
    assert "submitted " in proc.stdout
    assert "record example-submit-and-wait: overall " in proc.stdout
    assert "level " in proc.stdout
    assert "completeness_score: " in proc.stdout
    assert "reliable: " in proc.stdout


def test_progress_stream(redis_url: str, examples_worker: CustomWorker) -> None:
    proc = run_example("progress_stream.py", redis_url)
    assert_ok(proc, examples_worker)
    lines = proc.stdout.splitlines()
    states = [line.split()[0] for line in lines[1:] if line.strip()]
    assert "SUCCESS" in states, proc.stdout
    # At least one intermediate update arrived before the final one.
    assert any(s in ("PENDING", "STARTED", "PROGRESS") for s in states), proc.stdout
    assert "overall " in lines[-1]


def test_custom_task(redis_url: str, examples_worker: CustomWorker) -> None:
    proc = run_example("custom_task.py", redis_url)
    assert_ok(proc, examples_worker)
    assert "(examples.word_count)" in proc.stdout
    assert "SUCCESS" in proc.stdout
    assert "words: 16, distinct: 11" in proc.stdout
    assert "most common: the x3, big x2" in proc.stdout


def test_custom_worker_module_imports_without_connecting() -> None:
    """Importing the worker module builds nothing; ``app`` is built on first access."""
    code = (
        "import examples.custom_worker as m; "
        "assert m._app is None; "
        "app = m.app; "
        "assert 'examples.word_count' in app.tasks and 'vocalborn.analyze_audio' in app.tasks; "
        "print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}"  # nothing listens: must not matter
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- the FastAPI service, in-process ------------------------------------------------------------


def load_service() -> ModuleType:
    """Import examples/fastapi_service.py by path (examples/ is not on sys.path in tests)."""
    spec = importlib.util.spec_from_file_location(
        "example_fastapi_service", EXAMPLES / "fastapi_service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def service() -> ModuleType:
    return load_service()


@asynccontextmanager
async def open_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (as a server would) around an in-process client."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


@pytest.fixture
async def client(
    service: ModuleType,
    base_settings: TaskSettings,
    examples_worker: CustomWorker,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    app = service.create_app(base_settings, upload_dir=tmp_path / "uploads")
    async with open_client(app) as c:
        yield c


def audio_files(recording: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    rec = recording if recording is not None else sample_path("en_other_voice").read_bytes()
    return {
        "recording": ("attempt.flac", rec, "audio/flac"),
        "reference": ("reference.flac", sample_path("en_reference").read_bytes(), "audio/flac"),
    }


async def poll_until_final(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        response = await client.get(f"/analyses/{task_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] in ("SUCCESS", "FAILURE", "REVOKED", "LOST"):
            return body
        assert time.monotonic() < deadline, f"task {task_id} still {body['state']}"
        await asyncio.sleep(0.2)


def record_id() -> str:
    return f"api-{uuid.uuid4().hex[:12]}"


async def test_service_accepts_and_reports_success(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    rid = record_id()
    response = await client.post(
        "/analyses", data={"practice_record_id": rid, "language": "en"}, files=audio_files()
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.headers["location"] == f"http://test/analyses/{task_id}"
    assert len(list((tmp_path / "uploads").iterdir())) == 2

    body = await poll_until_final(client, task_id)
    assert body["state"] == "SUCCESS", body
    assert body["error"] is None
    result = body["result"]
    assert result["practice_record_id"] == rid
    assert 0 <= result["overall_score"] <= 100
    assert 1 <= result["level"] <= 5


async def test_service_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/analyses/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "no analysis" in response.json()["detail"]


async def test_service_non_audio_upload_is_refused_or_fails_unreadable(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A text file posted as a recording never yields a result.

    The service maps whatever the library decides: refused at submit (422 with the library's
    code, nothing kept on disk) when the manager probes the file, or accepted and then FAILURE
    with code ``unreadable`` when only the worker looks at the audio.
    """
    files = audio_files(recording=b"this is a text file, not a recording\n" * 20)
    response = await client.post("/analyses", data={"practice_record_id": record_id()}, files=files)
    if response.status_code == 422:
        body = response.json()
        assert body["code"] == "unreadable_audio", body
        assert "recording" in body["detail"]
        assert not any((tmp_path / "uploads").iterdir())
        return
    assert response.status_code == 202, response.text
    status = await poll_until_final(client, response.json()["task_id"])
    assert status["state"] == "FAILURE", status
    assert status["result"] is None
    assert status["error"]["code"] == "unreadable", status


async def test_service_missing_field_is_422(client: httpx.AsyncClient, tmp_path: Path) -> None:
    files = audio_files()
    del files["reference"]
    response = await client.post("/analyses", data={"practice_record_id": record_id()}, files=files)
    assert response.status_code == 422
    assert any(e["loc"][-1] == "reference" for e in response.json()["detail"])
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


async def test_service_invalid_record_id_is_422_and_stores_nothing(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await client.post(
        "/analyses", data={"practice_record_id": "no spaces/allowed"}, files=audio_files()
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["practice_record_id"]
    assert not any((tmp_path / "uploads").iterdir())


async def test_service_empty_upload_is_422(client: httpx.AsyncClient, tmp_path: Path) -> None:
    response = await client.post(
        "/analyses", data={"practice_record_id": record_id()}, files=audio_files(recording=b"")
    )
    assert response.status_code == 422
    assert "empty" in response.json()["detail"]
    assert not any((tmp_path / "uploads").iterdir())


async def test_service_invalid_request_error_is_422_with_message(
    service: ModuleType, base_settings: TaskSettings, tmp_path: Path
) -> None:
    """Uploads outside RECORDING_ROOTS: the library refuses them (InvalidRequestError) -> 422."""
    settings = base_settings.model_copy(update={"recording_roots": [tmp_path / "elsewhere"]})
    app = service.create_app(settings, upload_dir=tmp_path / "uploads")
    async with open_client(app) as client:
        response = await client.post(
            "/analyses", data={"practice_record_id": record_id()}, files=audio_files()
        )
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "recording_access"
        assert "recording" in body["detail"]
        assert not any((tmp_path / "uploads").iterdir())


async def test_service_broker_unavailable_is_503(service: ModuleType, tmp_path: Path) -> None:
    port = free_port()
    settings = TaskSettings(redis_url=f"redis://127.0.0.1:{port}", redis_connect_timeout_s=2.0)
    app = service.create_app(settings, upload_dir=tmp_path / "uploads")
    async with open_client(app) as client:
        response = await client.post(
            "/analyses", data={"practice_record_id": record_id()}, files=audio_files()
        )
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert f"127.0.0.1:{port}" in response.json()["detail"]
        status = await client.get(f"/analyses/{uuid.uuid4()}")
        assert status.status_code == 503
