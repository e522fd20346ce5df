"""Cancelling a task: the ``revoke`` transition, and what a worker checks to stop a running copy.

The caller side runs :func:`.calls.revoke` (with ``terminate``); the worker's heartbeat calls
:func:`terminate_requested` (``redis``). Neither needs Celery: a cancel that terminates reaches
the worker on the record's own pub/sub channel, not through a Celery control broadcast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .keys import RecordKeys

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["terminate_requested", "terminated_ids"]


def terminate_requested(pipe: Any, keys: RecordKeys, task_ids: Collection[str]) -> None:
    """Queue, on a sync pipeline, the read of which of ``task_ids`` a cancel asked to stop.

    Its reply (one list, in ``task_ids`` order, ``None`` for "not asked") is read by
    :func:`terminated_ids`. A pipeline, so the heartbeat adds the check to its own round trip.
    """
    pipe.zmscore(keys.terminate, list(task_ids))


def terminated_ids(task_ids: Collection[str], reply: list[float | None] | None) -> set[str]:
    """The ids of ``task_ids`` that :func:`terminate_requested`'s ``reply`` marks."""
    return {t for t, score in zip(task_ids, reply or [], strict=False) if score is not None}
