"""Style 2, the real thing: an embedded Valkey server and a worker process (seconds).

No fixture code here and no Redis install: the plugin that comes with vocalborn-tasks starts
the server once per session and a worker that runs the built-in tasks plus the modules named by
``vocalborn_task_modules`` in pyproject.toml (or ``@pytest.mark.vocalborn_task_modules``).
"""

from __future__ import annotations

import pytest
from speech_service.feedback import feedback_for, request_analysis
from speech_service.tasks import count_words

from vocalborn_tasks import TaskManager, TaskState
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.testing import WorkerProcess

pytestmark = pytest.mark.anyio


async def test_count_words_on_a_real_worker(
    vocalborn_worker: WorkerProcess, task_manager: TaskManager
) -> None:
    handle = await task_manager.submit(count_words, "the big ship is waiting")
    assert await task_manager.wait_for_result(handle, timeout=60) == 5
    status = await task_manager.get_task_status(handle)
    assert status.state is TaskState.SUCCESS


async def test_feedback_from_a_real_analysis(
    vocalborn_worker: WorkerProcess, task_manager: TaskManager
) -> None:
    task_id = await request_analysis(
        task_manager,
        "rec-worker-1",
        str(sample_path("en_other_voice")),
        str(sample_path("en_reference")),
    )
    assert (await feedback_for(task_manager, task_id)).startswith("Level ")
