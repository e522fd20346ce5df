"""The fake manager's controls: what a host's test uses to drive tasks (no server involved).

Its behaviour as a manager is pinned by the contract suite
(tests/integration/test_manager_contract.py), against the real manager too; here are the
controls the real one does not have.
"""

from __future__ import annotations

import pytest

from vocalborn_tasks import (
    AnalysisResult,
    AnalyzerInfo,
    BrokerUnavailableError,
    TaskContext,
    TaskFailedError,
    TaskLostError,
    TaskNotFoundError,
    TaskRevokedError,
    TaskState,
    task_definition,
)
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.testing import FakeTaskManager


@task_definition(name="unit.double", queue="ai_analysis")
def double(ctx: TaskContext, n: int) -> int:
    ctx.report_progress("doubling", 50.0)
    return 2 * n


def a_result(record: str = "rec-1") -> AnalysisResult:
    scores = dict.fromkeys(
        (
            "overall_score",
            "pronunciation_accuracy",
            "fluency_score",
            "rhythm_score",
            "tone_score",
            "clarity_score",
            "completeness_score",
        ),
        88.0,
    )
    return AnalysisResult(
        practice_record_id=record,
        level=2,
        reliable=True,
        analyzer=AnalyzerInfo(name="test", version="0"),
        processing_time_s=0.0,
        **scores,
    )


def request_kwargs(record: str = "rec-1") -> dict[str, str]:
    return {
        "practice_record_id": record,
        "recording": str(sample_path("en_other_voice")),
        "reference": str(sample_path("en_reference")),
    }


async def test_a_held_task_is_driven_by_hand(fake_task_manager: FakeTaskManager) -> None:
    fake = fake_task_manager
    fake.hold()
    task_id = await fake.submit_audio_analysis(**request_kwargs(), language="en")
    (sent,) = fake.submitted
    assert sent.task_id == task_id
    assert sent.request is not None
    assert sent.request.language == "en"
    assert sent.arguments["request"]["practice_record_id"] == "rec-1"
    stream = fake.watch(task_id)
    assert (await anext(stream)).state is TaskState.PENDING
    fake.start(task_id)
    fake.progress(task_id, "scoring", 140.0)  # clamped like report_progress
    fake.finish(task_id, a_result())
    states = [(s.state, s.step, s.progress) async for s in stream]
    assert states == [
        (TaskState.STARTED, "started", 0.0),
        (TaskState.PROGRESS, "scoring", 100.0),
        (TaskState.SUCCESS, None, None),
    ]
    assert await fake.wait_for_result(task_id) == a_result()
    with pytest.raises(ValueError, match="already SUCCESS"):
        fake.fail(task_id, "too_short")


async def test_fail_with_a_code_gives_its_cause_and_public_message(
    fake_task_manager: FakeTaskManager,
) -> None:
    fake = fake_task_manager
    fake.hold()
    handle = await fake.submit(double, 2)
    status = fake.fail(handle, "too_short")
    assert status.error is not None
    assert (status.error.code, status.error.cause) == ("too_short", "input")
    with pytest.raises(TaskFailedError) as failed:
        await fake.wait_for_result(handle)
    assert failed.value.public_message == "the recording is too short"
    other = await fake.submit(double, 3)
    fake.fail(other, "time_limit", "took 361 s")
    with pytest.raises(TaskFailedError) as slow:
        await fake.wait_for_result(other)
    assert (slow.value.code, slow.value.cause) == ("time_limit", "system")


async def test_release_runs_the_held_tasks_and_run_runs_one(
    fake_task_manager: FakeTaskManager,
) -> None:
    fake = fake_task_manager
    fake.hold()
    first = await fake.submit(double, 1)
    second = await fake.submit(double, 2)
    assert (await fake.run(first)).state is TaskState.SUCCESS
    assert (await fake.get_task_status(second)).state is TaskState.PENDING
    fake.release()
    assert await fake.wait_for_result(second) == 4
    third = await fake.submit(double, 3)  # no longer held
    await fake.join()
    assert (await fake.get_task_status(third)).result == 6


async def test_release_without_running_keeps_the_held_tasks_pending(
    fake_task_manager: FakeTaskManager,
) -> None:
    fake = fake_task_manager
    fake.hold()
    held = await fake.submit(double, 1)
    fake.release(run_held=False)
    assert await fake.wait_for_result(await fake.submit(double, 5)) == 10
    assert (await fake.get_task_status(held)).state is TaskState.PENDING


async def test_expire_and_lose(fake_task_manager: FakeTaskManager) -> None:
    fake = fake_task_manager
    handle = await fake.submit(double, 1)
    assert await fake.wait_for_result(handle) == 2
    assert fake.expire(handle).state is TaskState.EXPIRED
    with pytest.raises(TaskNotFoundError) as expired:
        await fake.wait_for_result(handle)
    assert expired.value.code == "expired"
    other = await fake.submit(double, 1)
    fake.lose(other)
    with pytest.raises(TaskLostError):
        await fake.wait_for_result(other)


async def test_a_broker_outage_ends_with_its_block(fake_task_manager: FakeTaskManager) -> None:
    fake = fake_task_manager
    with fake.broker_outage(), pytest.raises(BrokerUnavailableError):
        await fake.submit(double, 1)
    assert fake.submitted == []
    assert await fake.wait_for_result(await fake.submit(double, 1)) == 2


async def test_cancel_stops_a_running_analysis_at_its_next_report(
    fake_task_manager: FakeTaskManager,
) -> None:
    fake = fake_task_manager
    task_id = await fake.submit_audio_analysis(**request_kwargs())
    async for status in fake.watch(task_id):
        if status.state is TaskState.PROGRESS:
            await fake.cancel(task_id)
    await fake.join()  # the body stopped: nothing is left running
    assert (await fake.get_task_status(task_id)).state is TaskState.REVOKED
    with pytest.raises(TaskRevokedError):
        await fake.wait_for_result(task_id)


async def test_controls_name_unknown_tasks(fake_task_manager: FakeTaskManager) -> None:
    with pytest.raises(TaskNotFoundError):
        fake_task_manager.finish("nope", 1)


async def test_a_custom_analyzer_is_used(tmp_path: object) -> None:
    class Fixed:
        name = "fixed"
        version = "1"

        def analyze(self, recording: object, reference: object, **kwargs: object) -> AnalysisResult:
            return a_result("ignored")

    settings_roots = [sample_path("en_reference").parent]
    from vocalborn_tasks.testing import isolated_settings

    async with FakeTaskManager(
        isolated_settings(recording_roots=settings_roots), analyzer=Fixed()
    ) as fake:
        result = await fake.wait_for_result(await fake.submit_audio_analysis(**request_kwargs()))
    assert result.overall_score == 88.0
    assert result.practice_record_id == "rec-1"  # set from the request, as the worker does
