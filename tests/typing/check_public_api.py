"""A host application written only against the public API; ``mypy --strict`` must accept it.

Not run by pytest (the file name does not start with ``test_``): mypy checks it in CI. The
``type: ignore`` lines prove misuse is caught (strict mode flags unused ignores).
"""

from __future__ import annotations

from typing import assert_type

from vocalborn_tasks import (
    Alert,
    AlertStatus,
    AnalysisRequest,
    AnalysisResult,
    BeatEntry,
    BrokerError,
    BrokerUnavailableError,
    HealthReport,
    Monitor,
    TaskContext,
    TaskHandle,
    TaskManager,
    TaskSettings,
    TaskState,
    TaskStatus,
    WorkerStats,
    task_definition,
)
from vocalborn_tasks.analysis import analyze_recording


@task_definition(name="host.count_words", queue="ai_analysis")
def count_words(ctx: TaskContext, text: str, *, minimum: int = 1) -> int:
    ctx.report_progress("counting", 50.0)
    return sum(1 for word in text.split() if len(word) >= minimum)


async def host_app() -> None:
    settings = TaskSettings(redis_url="redis://127.0.0.1:6379")
    async with TaskManager(settings) as manager:
        task_id = await manager.submit_audio_analysis(
            AnalysisRequest(
                practice_record_id="rec-123",
                recording="/data/rec-123.wav",
                reference="/data/sentence-9.wav",
                language="zh-TW",
            )
        )
        assert_type(task_id, str)
        seed_form = await manager.submit_audio_analysis(
            practice_record_id="123", analysis_params={"analysis_type": "full"}
        )
        assert_type(seed_form, str)
        status = await manager.get_task_status(task_id)
        assert_type(status, TaskStatus)
        assert_type(status.state, TaskState)
        assert_type(status.progress, float | None)
        async for update in manager.watch(task_id):
            assert_type(update, TaskStatus)
        result = await manager.wait_for_result(task_id, timeout=60)
        assert_type(result, AnalysisResult)
        assert_type(result.level, int)
        await manager.cancel(task_id)

        handle = await manager.submit(count_words, "a few words", minimum=2)
        assert_type(handle, TaskHandle[int])
        words = await manager.wait_for_result(handle, timeout=10)
        assert_type(words, int)
        await manager.submit(count_words, 42)  # type: ignore[arg-type]
        await manager.submit(count_words, "x", maximum=3)  # type: ignore[call-arg]

        # An id the app stored: the typed handle comes back from the definition.
        stored = TaskHandle.from_id(count_words, handle.id)
        assert_type(stored, TaskHandle[int])
        assert_type(await manager.wait_for_result(stored, timeout=10), int)
        statuses = await manager.get_task_statuses([task_id, stored])
        assert_type(statuses, list[TaskStatus])
        try:
            await manager.ping()
        except BrokerUnavailableError:
            pass  # retry later
        except BrokerError as exc:  # BrokerAuthError: fix the credentials, do not retry
            assert_type(exc.retryable, bool)
        assert_type(TaskSettings().beat_schedule, dict[str, BeatEntry | None])

    alert: Alert | None = None
    if alert is not None:
        assert_type(alert.status, AlertStatus)

    async with Monitor(settings) as monitor:
        workers = await monitor.get_worker_stats()
        assert_type(workers, list[WorkerStats])
        assert_type(await monitor.get_queue_length("ai_analysis"), int)
        assert_type(await monitor.purge_queue("maintenance"), int)
        assert_type(await monitor.health(), HealthReport)


def offline() -> None:
    result = analyze_recording("attempt.wav", "reference.wav", language="en")
    assert_type(result, AnalysisResult)
