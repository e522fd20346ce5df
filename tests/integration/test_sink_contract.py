"""The RESULT_SINK contract as docs/reliability.md states it, against a real worker.

- a sink that raises a retryable error (``OSError``, ``RetryableTaskError``) has the task
  retried: the analysis runs again and the sink is called again, until it returns;
- a sink that raises anything else fails the task (``cause`` "system", code ``internal``):
  the caller never gets a result the host did not store;
- a sink that returned is not called again for that task.
(The one window, a worker killed after the sink's commit, is proved by
``tests/faults/test_fault_points.py[after_sink_commit]``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import AUDIO, WorkerProcess, flush
from vocalborn_tasks import TaskManager, TaskSettings, TaskState
from vocalborn_tasks.errors import TaskFailedError

pytestmark = pytest.mark.integration

SINK = """
import os
from pathlib import Path


def sink(task_id, result):
    calls = Path(os.environ["SINK_DIR"]) / task_id
    n = len(calls.read_text().split()) if calls.exists() else 0
    with calls.open("a") as f:
        f.write(f"{n + 1}\\n")
    if result.practice_record_id.startswith("flaky") and n == 0:
        raise OSError("database connection reset")
    if result.practice_record_id.startswith("broken"):
        raise ValueError("constraint violated")
"""


@pytest.fixture(scope="module")
def sink_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sink-calls")


@pytest.fixture(scope="module")
def sink_settings(base_settings: TaskSettings) -> TaskSettings:
    return base_settings.model_copy(
        update={
            "result_sink": "hostsink:sink",
            "retry_backoff_s": 0.2,
            "retry_backoff_max_s": 0.5,
            "worker_soft_shutdown_s": 1.0,  # teardown: a running task goes back after 1 s
        }
    )


@pytest.fixture(scope="module")
def sink_worker(
    sink_settings: TaskSettings, sink_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    flush(sink_settings)
    module_dir = tmp_path_factory.mktemp("hostsink")
    (module_dir / "hostsink.py").write_text(SINK)
    proc = WorkerProcess(
        sink_settings,
        name="sink",
        concurrency=2,
        log_dir=tmp_path_factory.mktemp("sink-logs"),
        extra_env={"PYTHONPATH": str(module_dir), "SINK_DIR": str(sink_dir)},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _analyse(settings: TaskSettings, record: str) -> str:
    async with TaskManager(settings) as manager:
        return await manager.submit_audio_analysis(
            practice_record_id=record,
            recording=str(AUDIO / "en_other_voice.flac"),
            reference=str(AUDIO / "en_reference.flac"),
            force=True,
        )


def _calls(sink_dir: Path, task_id: str) -> int:
    path = sink_dir / task_id
    return len(path.read_text().split()) if path.exists() else 0


async def test_a_sink_that_raises_a_retryable_error_is_retried(
    sink_settings: TaskSettings, sink_worker: WorkerProcess, sink_dir: Path
) -> None:
    task_id = await _analyse(sink_settings, "flaky-1")
    async with TaskManager(sink_settings) as manager:
        result = await manager.wait_for_result(task_id, timeout=90)
        status = await manager.get_task_status(task_id)
    assert result.practice_record_id == "flaky-1"
    assert status.state is TaskState.SUCCESS
    assert _calls(sink_dir, task_id) == 2  # failed once, stored on the retry, then never again
    assert "retryable OSError" in sink_worker.log_tail(400)


async def test_a_sink_that_raises_anything_else_fails_the_task(
    sink_settings: TaskSettings, sink_worker: WorkerProcess, sink_dir: Path
) -> None:
    task_id = await _analyse(sink_settings, "broken-1")
    async with TaskManager(sink_settings) as manager:
        with pytest.raises(TaskFailedError) as info:
            await manager.wait_for_result(task_id, timeout=90)
    assert (info.value.cause, info.value.code, info.value.remote_type) == (
        "system",
        "internal",
        "ValueError",
    )
    assert _calls(sink_dir, task_id) == 1
