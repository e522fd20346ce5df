"""Submit a host-defined task and get its typed result back.

Start a worker that also runs the tasks of ``custom_tasks.py``, from the repository root::

    export REDIS_URL=redis://127.0.0.1:6379
    vocalborn-tasks worker --include examples.custom_tasks &
    python examples/custom_task.py

(``custom_worker.py`` shows the other way: a worker module of your own for ``celery -A``.)
"""

from __future__ import annotations

import asyncio

from custom_tasks import WordCount, word_count  # the definition the worker registered

from vocalborn_tasks import TaskManager, TaskSettings

TEXT = "The big ship is waiting in the harbor tonight, and the big sheep is waiting too."


async def main() -> None:
    async with TaskManager(TaskSettings()) as manager:
        # Arguments are checked against word_count's signature (by mypy, and again here):
        # manager.submit(word_count, txt=TEXT) is a type error and an InvalidRequestError.
        handle = await manager.submit(word_count, text=TEXT, top=2)
        print(f"submitted {handle.id} ({handle.definition.name})")
        async for status in manager.watch(handle):
            print(f"{status.state.value:<8} {status.step or ''}")
        # handle is a TaskHandle[WordCount], so wait_for_result returns a WordCount:
        # `result.words + 1` type-checks, and `result.nonexistent` is a mypy error.
        result = await manager.wait_for_result(handle, timeout=30)
    assert isinstance(result, WordCount)
    print(f"words: {result.words}, distinct: {result.distinct}")
    print("most common: " + ", ".join(f"{word} x{n}" for word, n in result.most_common))


if __name__ == "__main__":
    asyncio.run(main())
