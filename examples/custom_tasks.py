"""A task of the host application's own, defined with the library's typed task definitions.

A definition is plain data (no Celery app, no connection), so this module is imported both by
the code that submits (``custom_task.py``) and by the worker that runs it (``custom_worker.py``).
The function's first parameter is the :class:`TaskContext`; the other arguments travel as JSON
and are validated by pydantic on the worker; the return annotation types the caller's result.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from vocalborn_tasks import TaskContext, task_definition


class WordCount(BaseModel):
    """What ``word_count`` returns; the caller gets this model back, not a dict."""

    words: int
    distinct: int
    most_common: list[tuple[str, int]]


@task_definition(name="examples.word_count", queue="ai_analysis")
def word_count(ctx: TaskContext, text: str, top: int = 3) -> WordCount:
    """Count the words of ``text`` and name the ``top`` most frequent ones."""
    ctx.report_progress("splitting", 10.0)  # seen by TaskManager.watch() and get_task_status()
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    ctx.report_progress("counting", 60.0)
    counts = Counter(words)
    return WordCount(words=len(words), distinct=len(counts), most_common=counts.most_common(top))
