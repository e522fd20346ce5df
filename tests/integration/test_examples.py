"""The examples, run as users run them: scripts as subprocesses, the web app in-process.

All of them talk to the session's real server and to one real worker started as the README
shows (``vocalborn-tasks worker --include examples.custom_tasks``), which runs the built-in
tasks plus the example's own ``examples.word_count``. A worker without that task (the
shared ``worker`` fixture) must not run next to it: it would take the custom task off the
queue and reject it as unregistered.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from support import ROOT, WorkerProcess, flush
from vocalborn_tasks import TaskSettings
from vocalborn_tasks.embedded import free_port
from vocalborn_tasks.samples import sample_path

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"
SCRIPT_TIMEOUT_S = 120.0
POLL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def examples_worker(
    base_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """``vocalborn-tasks worker --include examples.custom_tasks``, as the README shows."""
    flush(base_settings)
    proc = WorkerProcess(
        base_settings,
        name="examples",
        concurrency=2,
        pool="prefork",
        log_dir=tmp_path_factory.mktemp("example-logs"),
        args=("--include", "examples.custom_tasks"),
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


def test_submit_and_wait(redis_url: str, examples_worker: WorkerProcess) -> None:
    proc = run_example("submit_and_wait.py", redis_url)
    assert_ok(proc, examples_worker)
    assert "submitted " in proc.stdout
    assert "record example-submit-and-wait: overall " in proc.stdout
    assert "level " in proc.stdout
    assert "completeness_score: " in proc.stdout
    assert "reliable: " in proc.stdout


def test_progress_stream(redis_url: str, examples_worker: WorkerProcess) -> None:
    proc = run_example("progress_stream.py", redis_url)
    assert_ok(proc, examples_worker)
    lines = proc.stdout.splitlines()
    states = [line.split()[0] for line in lines[1:] if line.strip()]
    assert "SUCCESS" in states, proc.stdout
    # At least one intermediate update arrived before the final one.
    assert any(s in ("PENDING", "STARTED", "PROGRESS") for s in states), proc.stdout
    assert "overall " in lines[-1]


def test_custom_task(redis_url: str, examples_worker: WorkerProcess) -> None:
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
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_service_is_short() -> None:
    """The example is the library's router plus a few lines: readable at a glance."""
    source = (EXAMPLES / "fastapi_service.py").read_text()
    code = [line for line in source.split('"""', 2)[2].splitlines() if line.strip()]
    assert len(code) <= 15, code


async def test_service_accepts_and_returns_a_result(
    base_settings: TaskSettings, examples_worker: WorkerProcess, tmp_path: Path
) -> None:
    """The whole route set is tested in test_fastapi.py; here: the example as written works."""
    (tmp_path / "references").mkdir()
    (tmp_path / "references" / "sentence-9.flac").write_bytes(
        sample_path("en_reference").read_bytes()
    )
    settings = base_settings.model_copy(
        update={
            "recording_roots": [tmp_path],
            "upload_dir": tmp_path / "uploads",
            "reference_dir": tmp_path / "references",
        }
    )
    app = load_service().create_app(settings)
    rid = f"api-{uuid.uuid4().hex[:12]}"
    files = {
        "recording": ("attempt.flac", sample_path("en_other_voice").read_bytes(), "audio/flac"),
    }
    data = {"practice_record_id": rid, "language": "en", "reference_id": "sentence-9"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"X-User": "patient-1"},
        ) as c,
    ):
        anonymous = await c.post("/analyses", data=data, files=files, headers={"X-User": ""})
        assert anonymous.status_code == 401  # the host's own authentication, as problem+json
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert anonymous.headers["www-authenticate"] == "Bearer"
        response = await c.post("/analyses", data=data, files=files)
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        assert response.headers["location"] == f"/analyses/{task_id}"  # relative
        result = await c.get(f"/analyses/{task_id}/result", params={"wait": POLL_TIMEOUT_S})
        assert result.status_code == 200, result.text
        assert result.json()["practice_record_id"] == rid
        missing = await c.get(f"/analyses/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


# --- the host project and its own tests (docs/testing.md) ----------------------------------------


def test_host_project_tests_pass_with_the_plugin_alone(tmp_path: Path) -> None:
    """``examples/host_project``'s suite, run as its developers run it: ``pytest`` in its root.

    Its own configuration (pyproject.toml), no fixture code of its own, no server or worker of
    ours: the plugin starts them. pytest-asyncio is switched off (anyio's plugin, which the
    library installs, runs the async tests), as in a venv with only ``[testing]`` installed.
    """
    project = EXAMPLES / "host_project"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
            "--basetemp",
            str(tmp_path / "basetemp"),
            "-q",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "9 passed" in proc.stdout, proc.stdout
