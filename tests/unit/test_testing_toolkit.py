"""The testing toolkit itself: the plugin's registration and footprint, settings isolation,
the worker's environment, and the FastAPI helper (with the fake: no server involved)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from vocalborn_tasks import AnalysisResult, TaskSettings, TaskState
from vocalborn_tasks.fastapi import analysis_router, install_error_handlers, manager_lifespan
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.testing import isolated_settings, settings_environment
from vocalborn_tasks.testing import plugin as plugin_module
from vocalborn_tasks.testing.web import service_client

ROOT = Path(__file__).resolve().parents[2]


# --- the plugin ---------------------------------------------------------------------------------


def test_the_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="pytest11") if e.name == "vocalborn_tasks"]
    assert entry.value == "vocalborn_tasks.testing.plugin"
    assert pytestconfig.pluginmanager.get_plugin("vocalborn_tasks") is plugin_module


def test_loading_the_plugin_imports_no_celery_and_starts_nothing() -> None:
    code = (
        "import sys, vocalborn_tasks.testing.plugin\n"
        "heavy = [m for m in ('celery', 'kombu', 'vocalborn_tasks.testing.fake',"
        " 'vocalborn_tasks.testing.worker', 'vocalborn_tasks.embedded', 'fastapi')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout


def fixture_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if ast.unparse(target) in ("pytest.fixture", "fixture", "pytest_asyncio.fixture"):
                    names.add(node.name)
    return names


def test_plugin_fixture_names_do_not_clash_with_this_repository() -> None:
    """Our own suites load the plugin too: a clash would silently shadow one fixture."""
    ours = fixture_names(Path(plugin_module.__file__ or ""))
    assert {"vocalborn_server", "vocalborn_settings", "vocalborn_worker", "task_manager"} <= ours
    overridden_on_purpose = {"vocalborn_server"}  # tests/conftest.py: CI's server binary
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        clash = (fixture_names(path) & ours) - overridden_on_purpose
        assert not clash, f"{path.relative_to(ROOT)} defines {sorted(clash)}"


# --- settings -----------------------------------------------------------------------------------


def test_isolated_settings_ignore_environment_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://production:6379")
    monkeypatch.setenv("RECORDING_RESOLVER", "myapp.storage:Resolver")
    (tmp_path / ".env").write_text("ANALYZER=myapp.model:Model\n")
    monkeypatch.chdir(tmp_path)
    settings = isolated_settings(recording_roots=[tmp_path])
    assert settings.redis_url is None
    assert settings.recording_resolver is None
    assert settings.analyzer is None
    assert isinstance(settings, TaskSettings)


def test_the_worker_environment_gives_exactly_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = isolated_settings(
        redis_url="redis://127.0.0.1:7001",
        recording_roots=[tmp_path],
        worker_heartbeat_s=0.5,
        task_modules=["myapp.tasks"],
    )
    leaked = {
        "REDIS_HOST": "elsewhere",
        "CELERY_WORKER_CONCURRENCY": "64",
        "celery_broker_url": "redis://leak",
        "ANALYZER": "myapp.model:Model",
        "PATH": os.environ.get("PATH", ""),
    }
    env = settings_environment(settings, base=leaked)
    assert "REDIS_HOST" not in env
    assert "ANALYZER" not in env
    assert not [k for k in env if k.upper().startswith("CELERY")]
    assert env["PATH"] == leaked["PATH"]
    # What a worker process would build from that environment equals the settings.
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert TaskSettings() == TaskSettings.model_validate(settings.model_dump())


# --- the FastAPI helper -------------------------------------------------------------------------


def create_app(settings: TaskSettings) -> FastAPI:
    app = FastAPI(lifespan=manager_lifespan(settings))
    install_error_handlers(app)
    app.include_router(analysis_router(settings), prefix="/analyses")
    return app


def add_reference(directory: Path) -> None:
    """The therapist's reference recording, where the router looks ``sentence-1`` up."""
    (directory / "references").mkdir(exist_ok=True)
    (directory / "references" / "sentence-1.flac").write_bytes(
        sample_path("en_reference").read_bytes()
    )


def upload(record: str) -> dict[str, object]:
    return {
        "data": {"practice_record_id": record, "language": "en", "reference_id": "sentence-1"},
        "files": {
            "recording": ("attempt.flac", sample_path("en_other_voice").read_bytes()),
        },
    }


async def test_service_client_puts_the_fake_behind_the_routes(tmp_path: Path) -> None:
    add_reference(tmp_path)
    async with service_client(create_app, tmp_path, hold=True) as service:
        response = await service.http.post("/analyses", **upload("web-1"))  # type: ignore[arg-type]
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        (sent,) = service.manager.submitted
        assert sent.request is not None
        assert Path(sent.request.recording or "").parent == tmp_path / "uploads"
        status = await service.http.get(f"/analyses/{task_id}")
        assert status.json()["state"] == TaskState.PENDING
        service.manager.fail(task_id, "no_speech")
        failed = await service.http.get(f"/analyses/{task_id}/result")
        assert failed.status_code == 422
        assert failed.json()["code"] == "no_speech"
        with service.manager.broker_outage():
            down = await service.http.get(f"/analyses/{task_id}")
        assert down.status_code == 503
        assert down.headers["retry-after"]
    assert service.app.dependency_overrides == {}


async def test_service_client_runs_the_real_engine(tmp_path: Path) -> None:
    add_reference(tmp_path)
    async with service_client(create_app, tmp_path) as service:
        response = await service.http.post("/analyses", **upload("web-2"))  # type: ignore[arg-type]
        assert response.status_code == 202, response.text
        result = await service.http.get(response.json()["result_url"], params={"wait": 60})
        assert result.status_code == 200, result.text
        assert AnalysisResult.model_validate(result.json()).practice_record_id == "web-2"
