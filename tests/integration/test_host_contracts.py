"""Contracts a host relies on, against real workers and servers (issue 13).

- ``TaskFailedError`` says whose fault it was (``cause``) with a ``code`` that is always set,
  and a public message without server paths;
- ``vocalborn-tasks worker --include MODULE`` runs a host's task definitions;
- a worker without ``RECORDING_ROOTS`` warns at start-up;
- ``watch()`` sets ``task_name`` on every event, resumes after a cursor, and rides out a Redis
  restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import AUDIO, WorkerProcess, flush
from vocalborn_tasks import TaskManager, TaskSettings, TaskState, TaskStatus
from vocalborn_tasks.embedded import LocalServer
from vocalborn_tasks.errors import TaskFailedError
from vocalborn_tasks.tasks.builtin import echo

pytestmark = pytest.mark.integration

HOST_MODULE = """
from vocalborn_tasks import TaskContext, task_definition


@task_definition(name="hostmod.shout", queue="ai_analysis")
def shout(ctx: TaskContext, text: str) -> str:
    ctx.report_progress("shouting", 50.0)
    return text.upper()


@task_definition(name="hostmod.boom", queue="ai_analysis")
def boom(ctx: TaskContext) -> int:
    raise RuntimeError("cannot open /srv/private/layout/db.sqlite")
"""


@pytest.fixture(scope="module")
def host_worker(
    base_settings: TaskSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """``vocalborn-tasks worker --include hostmod_tasks`` (a module in a directory of its own)."""
    flush(base_settings)
    package_dir = tmp_path_factory.mktemp("hostpkg")
    (package_dir / "hostmod_tasks.py").write_text(HOST_MODULE)
    proc = WorkerProcess(
        base_settings,
        name="host",
        concurrency=2,
        log_dir=tmp_path_factory.mktemp("host-logs"),
        extra_env={"PYTHONPATH": str(package_dir)},
        args=("--include", "hostmod_tasks"),
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _host_definitions(tmp_path: Path) -> tuple[object, object]:
    import importlib.util

    path = tmp_path / "hostmod_tasks.py"
    path.write_text(HOST_MODULE)
    spec = importlib.util.spec_from_file_location("hostmod_tasks_local", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.shout, module.boom


async def test_include_runs_host_tasks_and_failures_say_whose_fault(
    base_settings: TaskSettings, host_worker: WorkerProcess, tmp_path: Path
) -> None:
    shout, boom = _host_definitions(tmp_path)
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(shout, "hello")  # type: ignore[arg-type]
        assert await manager.wait_for_result(handle, timeout=60) == "HELLO"

        # A bug in the back end: cause "system", code "internal", no path in the public text.
        failing = await manager.submit(boom)  # type: ignore[arg-type]
        with pytest.raises(TaskFailedError) as info:
            await manager.wait_for_result(failing, timeout=60)
        exc = info.value
        assert (exc.cause, exc.code, exc.remote_type) == ("system", "internal", "RuntimeError")
        assert "/srv/private" in exc.remote_message  # the detail, for logs
        assert "/" not in exc.public_message
        status = await manager.get_task_status(failing)
        assert status.error is not None
        assert (status.error.code, status.error.cause) == ("internal", "system")

        # The patient's recording: cause "input", a stable code, a path-free public message.
        bad = await manager.submit_audio_analysis(
            practice_record_id="contract-too-short",
            recording=str(AUDIO / "tiny_10ms.wav"),
            reference=str(AUDIO / "en_reference.flac"),
            force=True,
        )
        with pytest.raises(TaskFailedError) as info:
            await manager.wait_for_result(bad, timeout=60)
        assert (info.value.cause, info.value.code) == ("input", "too_short")
        assert str(AUDIO) not in info.value.public_message


def test_worker_without_recording_roots_warns_at_start(host_worker: WorkerProcess) -> None:
    log = host_worker.log_tail(400)
    lines = [line for line in log.splitlines() if "RECORDING_ROOTS is not set" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], log


def test_include_of_a_missing_module_is_a_one_line_configuration_error(
    base_settings: TaskSettings, tmp_path: Path
) -> None:
    proc = WorkerProcess(
        base_settings, name="noinclude", log_dir=tmp_path, args=("--include", "no_such_mod_x")
    )
    proc.start(wait=False)
    assert proc.proc is not None
    code = proc.proc.wait(timeout=60)
    proc.proc = None
    assert code == 2, proc.log_tail()
    assert "no_such_mod_x" in proc.log_tail()
    assert "Traceback" not in proc.log_tail()


async def test_watch_names_the_task_on_every_event_and_resumes_after_a_cursor(
    base_settings: TaskSettings, host_worker: WorkerProcess
) -> None:
    async with TaskManager(base_settings) as manager:
        handle = await manager.submit(echo, "hi", delay_s=1.0)
        seen = [status async for status in manager.watch(handle)]
        assert [s.state for s in seen][-1] is TaskState.SUCCESS
        assert any(s.state is TaskState.PROGRESS for s in seen), seen
        assert {s.task_name for s in seen} == {"vocalborn.test"}, seen
        # Resume: after a progress event only the final status comes; after it, nothing.
        progress = next(s for s in seen if s.state is TaskState.PROGRESS)
        resumed = [s async for s in manager.watch(handle, after=progress.cursor)]
        assert [s.state for s in resumed] == [TaskState.SUCCESS]
        assert [s async for s in manager.watch(handle, after=seen[-1].cursor)] == []


async def test_watch_rides_out_a_redis_restart(tmp_path: Path, server_binary: str | None) -> None:
    """A 2 s restart of the server mid-stream: the stream goes on to SUCCESS, no error."""
    server = LocalServer(binary=server_binary, data_dir=tmp_path / "server", die_with_parent=True)
    server.start()
    settings = TaskSettings(
        redis_url=server.url,
        celery_log_level="INFO",
        worker_heartbeat_s=0.5,
        worker_dead_after_s=3.0,
        redis_connect_timeout_s=2.0,
        worker_soft_shutdown_s=1.0,  # the worker stops right after its result (tests/conftest.py)
    )
    worker = WorkerProcess(settings, name="blip", log_dir=tmp_path)
    try:
        worker.start()
        events: list[TaskStatus] = []
        restarted = False
        async with TaskManager(settings) as manager:
            handle = await manager.submit(echo, "through the blip", delay_s=6.0)
            async for status in manager.watch(handle):
                events.append(status)
                if status.state is TaskState.PROGRESS and not restarted:
                    restarted = True
                    await asyncio.to_thread(server.stop)
                    await asyncio.sleep(2.0)  # the outage
                    await asyncio.to_thread(server.start)
        assert events[-1].state is TaskState.SUCCESS, events
        assert events[-1].result["message"] == "through the blip"
        assert {s.task_name for s in events} == {"vocalborn.test"}, events
        keys = [s.cursor for s in events]
        assert len(keys) == len(set(keys)), keys  # nothing repeated after the reconnect
        assert restarted
    finally:
        worker.stop()
        server.close()
