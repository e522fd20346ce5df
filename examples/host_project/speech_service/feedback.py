"""The host's service layer: written against the manager's protocol, so tests pass a fake."""

from __future__ import annotations

from vocalborn_tasks import AnalysisRequest, TaskFailedError
from vocalborn_tasks.facade import TaskManagerProtocol


async def request_analysis(
    manager: TaskManagerProtocol, record_id: str, recording: str, reference: str
) -> str:
    """Queue the analysis of one practice recording; returns the task id."""
    return await manager.submit_audio_analysis(
        AnalysisRequest(
            practice_record_id=record_id, recording=recording, reference=reference, language="en"
        )
    )


async def feedback_for(manager: TaskManagerProtocol, task_id: str, timeout: float = 60) -> str:
    """What the patient reads once the analysis is done."""
    try:
        result = await manager.wait_for_result(task_id, timeout=timeout)
    except TaskFailedError as exc:
        if exc.cause == "input":
            return f"Please record again: {exc.public_message}."
        raise
    return f"Level {result.level}, score {result.overall_score:.0f}."
