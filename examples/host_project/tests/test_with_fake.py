"""Style 1, the fake manager: no server, no worker (milliseconds when the test drives the task).

``fake_task_manager`` implements the protocol the service layer is written against. Tasks run
inline (the real analysis engine in a thread) unless the test holds them to drive them by hand.
"""

from __future__ import annotations

import pytest
from speech_service.feedback import feedback_for, request_analysis
from speech_service.tasks import count_words

from vocalborn_tasks import BrokerUnavailableError, TaskFailedError
from vocalborn_tasks.samples import sample_path
from vocalborn_tasks.testing import FakeTaskManager

pytestmark = pytest.mark.anyio

RECORDING = str(sample_path("en_other_voice"))
REFERENCE = str(sample_path("en_reference"))


async def test_the_request_the_service_sends(fake_task_manager: FakeTaskManager) -> None:
    fake_task_manager.hold()  # stays PENDING: nothing runs
    await request_analysis(fake_task_manager, "rec-1", RECORDING, REFERENCE)
    (sent,) = fake_task_manager.submitted
    assert sent.request is not None
    assert (sent.request.practice_record_id, sent.request.language) == ("rec-1", "en")


async def test_an_unusable_recording_asks_to_record_again(
    fake_task_manager: FakeTaskManager,
) -> None:
    fake_task_manager.hold()
    task_id = await request_analysis(fake_task_manager, "rec-2", RECORDING, REFERENCE)
    fake_task_manager.fail(task_id, "too_short")
    text = await feedback_for(fake_task_manager, task_id)
    assert text == "Please record again: the recording is too short."


async def test_feedback_from_the_real_engine(fake_task_manager: FakeTaskManager) -> None:
    task_id = await request_analysis(fake_task_manager, "rec-3", RECORDING, REFERENCE)
    assert (await feedback_for(fake_task_manager, task_id)).startswith("Level ")


async def test_the_host_task_runs_inline(fake_task_manager: FakeTaskManager) -> None:
    assert (
        await fake_task_manager.wait_for_result(await fake_task_manager.submit(count_words, "a b"))
        == 2
    )
    empty = await fake_task_manager.submit(count_words, "  ")
    with pytest.raises(TaskFailedError) as failed:
        await fake_task_manager.wait_for_result(empty)
    assert (failed.value.code, failed.value.cause) == ("no_speech", "input")


async def test_a_broker_outage(fake_task_manager: FakeTaskManager) -> None:
    with fake_task_manager.broker_outage(), pytest.raises(BrokerUnavailableError):
        await request_analysis(fake_task_manager, "rec-4", RECORDING, REFERENCE)
