"""Submit one analysis of a bundled sample pair and await its typed result.

Run a worker first (``vocalborn-tasks worker``), then::

    REDIS_URL=redis://127.0.0.1:6379 python examples/submit_and_wait.py
"""

from __future__ import annotations

import asyncio

from vocalborn_tasks import AnalysisRequest, AnalysisResult, TaskManager, TaskSettings
from vocalborn_tasks.samples import sample_path  # demo recordings shipped with the package


async def main() -> None:
    settings = TaskSettings()  # REDIS_URL (or REDIS_HOST/REDIS_PORT...) from the environment
    request = AnalysisRequest(
        practice_record_id="example-submit-and-wait",
        recording=str(sample_path("en_other_voice")),  # the patient's attempt
        reference=str(sample_path("en_reference")),  # the therapist's reference
        language="en",
    )
    async with TaskManager(settings) as manager:
        # Returns at once: the request is validated here and queued on "ai_analysis".
        task_id = await manager.submit_audio_analysis(request)
        print(f"submitted {task_id}")
        # Waits on Redis pub/sub (no polling); raises TaskFailedError, TaskTimeoutError...
        result: AnalysisResult = await manager.wait_for_result(task_id, timeout=120)

    print(f"record {result.practice_record_id}: overall {result.overall_score:.0f}/100")
    print(f"level {result.level} (1 best .. 5)")
    for name in ("pronunciation_accuracy", "fluency_score", "rhythm_score", "tone_score"):
        print(f"  {name}: {getattr(result, name):.0f}")
    for name in ("clarity_score", "completeness_score"):
        print(f"  {name}: {getattr(result, name):.0f}")
    print(f"reliable: {result.reliable}")
    for suggestion in result.suggestions:
        print(f"  suggestion: {suggestion}")


if __name__ == "__main__":
    asyncio.run(main())
