"""The host's own task, imported by the web app (to submit) and by the workers (to run)."""

from __future__ import annotations

from vocalborn_tasks import AudioError, TaskContext, task_definition


@task_definition(name="speech_service.count_words", queue="ai_analysis")
def count_words(ctx: TaskContext, transcript: str) -> int:
    """Count the words of a transcript; an empty one is the patient's input problem."""
    ctx.report_progress("counting", 50.0)
    words = transcript.split()
    if not words:
        raise AudioError("the transcript is empty", code="no_speech")
    return len(words)
