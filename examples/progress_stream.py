"""Follow an analysis as it runs: every state change and progress step, as it happens.

Run a worker first (``vocalborn-tasks worker``), then::

    REDIS_URL=redis://127.0.0.1:6379 python examples/progress_stream.py
"""

from __future__ import annotations

import asyncio

from vocalborn_tasks import AnalysisRequest, TaskManager, TaskSettings, TaskState
from vocalborn_tasks.samples import sample_path


async def main() -> None:
    request = AnalysisRequest(
        practice_record_id="example-progress-stream",
        recording=str(sample_path("zh_other_voice")),
        reference=str(sample_path("zh_reference")),
        language="zh-TW",
    )
    async with TaskManager(TaskSettings()) as manager:
        task_id = await manager.submit_audio_analysis(request)
        print(f"submitted {task_id}")
        # watch() yields the current status, then one per change; it ends at a final state.
        async for status in manager.watch(task_id):
            percent = "" if status.progress is None else f"{status.progress:5.1f}%"
            print(f"{status.state.value:<8} {percent:>6} {status.step or ''}")
            if status.state is TaskState.FAILURE and status.error is not None:
                print(f"failed: {status.error.message} [{status.error.code}]")
        # The task is final now, so this returns at once (or raises the task's error).
        result = await manager.wait_for_result(task_id, timeout=10)
        print(f"overall {result.overall_score:.0f}/100, level {result.level}")


if __name__ == "__main__":
    asyncio.run(main())
